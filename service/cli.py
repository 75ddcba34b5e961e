"""The ``gif-service`` command line (Typer)."""

from __future__ import annotations

import typer

from jobs import logs
from jobs.config import Settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="gif-service: influence-function edits as a REST service.",
)


@app.callback()
def main() -> None:
    """gif-service: influence-function edits as a REST service."""


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Run the API with the embedded executor (SQLite + worker processes under GIF_HOME)."""
    import uvicorn

    from .auth import ensure_key
    from .main import create_app

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    key = ensure_key(settings)
    if key is not None:
        typer.echo(
            f"No API key configured: generated one for tenant 'default' (stored in {settings.key_file}):"
        )
        typer.echo(f"    {key}")
    typer.echo(
        f"gif-service on http://{host}:{port}  (data: {settings.home.resolve()}, {settings.workers} worker(s))"
    )
    typer.echo("local mode: single machine, SQLite job store; not for multi-host deployments")
    logs.configure(log_level.upper())
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, timeout_keep_alive=5)
