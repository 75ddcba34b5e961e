"""service: the FastAPI app (embedded mode): routes, auth, problem+json errors, middleware, CLI.

Routes are thin: each one calls a ``jobs`` function. This package never imports torch, ``gif``
or ``workers`` modules at import time; the executor is loaded by name (``GIF_EXECUTOR``).
"""
