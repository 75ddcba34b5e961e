"""workers: job execution (the runner that turns a job spec into ``gif`` calls, progress and
cancellation plumbing, the embedded executor, the upload inspector).

Importing this package (or ``workers.local``) does not import torch: the heavy modules are
loaded inside the worker processes only. Workers never import ``service``.
"""
