"""``python -m service`` = the ``gif-service`` command."""

from .cli import app

app(prog_name="gif-service")
