"""jobs: the domain core shared by the API (``service``) and the workers (``workers``).

Settings, the SQL job store (the source of truth), the job state machine, request specs, the
content-addressed blob store and the use cases (submit, cancel, list). No FastAPI, no torch:
``import jobs`` stays cheap and safe to load in the API process.
"""
