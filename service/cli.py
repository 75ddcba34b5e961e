"""The ``gif-service`` command line (Typer)."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

import gif_client
from jobs import logs
from jobs.config import Settings, describe

EXIT_CODES_HELP = (
    "Exit codes: 0 succeeded/ok; 1 job failed; 2 usage or validation error (4xx before submit); "
    "3 job cancelled; 4 --wait timed out (job still running); 5 auth error; "
    "6 server or network error after retries."
)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_TIMEOUT, EXIT_AUTH, EXIT_SERVER = range(7)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="gif-service: influence-function edits as a REST service.\n\n" + EXIT_CODES_HELP,
)


@app.callback()
def main(
    ctx: typer.Context,
    url: str = typer.Option(
        None, "--url", envvar="GIF_BASE_URL", help="Service URL (default http://127.0.0.1:8000)."
    ),
    api_key: str = typer.Option(None, "--api-key", envvar="GIF_API_KEY", help="Bearer API key."),
) -> None:
    """gif-service: influence-function edits as a REST service."""
    ctx.obj = {"url": url, "api_key": api_key}


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Run the API: embedded (SQLite + worker processes under GIF_HOME), or distributed when
    GIF_BROKER_URL is set (jobs go to `gif-service worker` processes through Celery)."""
    import uvicorn

    from .auth import ensure_key
    from .main import create_app

    logs.configure(log_level.upper())
    settings = _settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    key = ensure_key(settings)
    if key is not None:
        typer.echo(
            f"No API key configured: generated one for tenant 'default' (stored in {settings.key_file}):"
        )
        typer.echo(f"    {key}")
    if settings.distributed:
        typer.echo(f"gif-service on http://{host}:{port}  (distributed: jobs go to Celery workers)")
    else:
        typer.echo(
            f"gif-service on http://{host}:{port}  (data: {settings.home.resolve()}, "
            f"{settings.workers} worker(s))"
        )
        typer.echo("local mode: single machine, SQLite job store; not for multi-host deployments")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=5,
        access_log=False,
    )  # the app writes its own JSON access log (service.middleware)


@app.command()
def worker(
    queues: str = typer.Option(
        "", help="Comma-separated queues; default: cpu and gpu.<GIF_GPU_POOL>. GPU hosts: one worker per GPU."
    ),
    concurrency: int = typer.Option(1, min=1, help="Pool processes (1 per GPU; CPU hosts: up to the cores)."),
    pool: str = typer.Option("prefork", help="Celery pool; prefork gives time limits and process recycling."),
    name: str = typer.Option("", help="Worker node name (default gif@<host>)."),
    max_tasks_per_child: int = typer.Option(20, min=1, help="Recycle a pool process after this many tasks."),
    log_level: str = typer.Option("INFO", help="Celery log level."),
) -> None:
    """Run a Celery worker of distributed mode (needs GIF_BROKER_URL and a shared GIF_DATABASE_URL).

    Pin one GPU per worker with CUDA_VISIBLE_DEVICES and set REMAP_SIGTERM=SIGQUIT, so that a
    SIGTERM gives running jobs `worker_soft_shutdown_timeout` to finish before their messages return.
    """
    settings = _settings()
    if not settings.distributed:
        typer.echo("error: GIF_BROKER_URL is not set (the worker needs a Celery broker)", err=True)
        raise typer.Exit(2)
    # Loaded once in the parent, so that pool children fork with it (seconds faster each, which
    # matters after every recycle or crash). Importing torch does not initialise CUDA.
    import torch  # noqa: F401

    from workers.execute import device_problem

    if problem := device_problem(settings.device):
        typer.echo(f"error: GIF_DEVICE={settings.device}, but {problem}", err=True)
        raise typer.Exit(2)
    logs.configure(log_level.upper())

    from workers.celery_app import CPU_QUEUE, gpu_queue
    from workers.celery_app import app as celery

    argv = [
        "worker",
        "--queues", queues or f"{CPU_QUEUE},{gpu_queue(settings.gpu_pool)}",
        "--pool", pool,
        "--concurrency", str(concurrency),
        "--prefetch-multiplier", "1",
        "-O", "fair",
        "--max-tasks-per-child", str(max_tasks_per_child),
        "--task-events",
        "--loglevel", log_level.upper(),
        "--hostname", name or "gif@%h",
    ]  # fmt: skip
    celery.worker_main(argv)


def _settings() -> Settings:
    """The settings from the environment; invalid or contradictory ones end the command (exit 2)
    with one line per problem, naming the variables."""
    try:
        return Settings()
    except ValidationError as exc:
        typer.echo("error: invalid settings:\n  " + describe(exc).replace("\n", "\n  "), err=True)
        raise typer.Exit(EXIT_USAGE) from None


# -- client commands (gif_client; no torch) ------------------------------------------------------


def _client(ctx: typer.Context) -> gif_client.Client:
    obj = ctx.find_root().obj or {}
    return gif_client.Client(base_url=obj.get("url"), api_key=obj.get("api_key"))


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _fail(code: int, message: str, job: dict | None = None) -> NoReturn:
    if job is not None:
        _print_json(job)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _run(action: Callable[[gif_client.Client], Any], ctx: typer.Context) -> None:
    """Run ``action`` with a client and turn exceptions into the documented exit codes."""
    try:
        with _client(ctx) as client:
            action(client)
    except gif_client.JobFailed as exc:
        _fail(EXIT_FAILED, str(exc), exc.job)
    except gif_client.JobCancelled as exc:
        _fail(EXIT_CANCELLED, str(exc), exc.job)
    except gif_client.WaitTimeout as exc:
        _fail(EXIT_TIMEOUT, str(exc), exc.job)
    except gif_client.AuthError as exc:
        _fail(EXIT_AUTH, str(exc))
    except gif_client.ApiError as exc:  # NetworkError has status 0
        if exc.status == 0 or exc.status >= 500:
            _fail(EXIT_SERVER, str(exc))
        _fail(EXIT_USAGE, str(exc) + "".join(f"\n  {e.get('loc')}: {e.get('msg')}" for e in exc.errors))
    except gif_client.IntegrityError as exc:
        _fail(EXIT_SERVER, str(exc))
    except (OSError, ValueError) as exc:  # unreadable file, bad JSON
        _fail(EXIT_USAGE, str(exc))


def _estimated(job: dict) -> str:
    """``", about N s (the median of K jobs like it)"`` where the job has an estimate."""
    estimate = job.get("estimate")
    if not estimate:
        return ""
    return f", about {estimate['seconds']:.0f} s (the median of {estimate['based_on']} jobs like it)"


def _progress_printer() -> Callable[[dict], None]:
    """Prints each new progress line once; the line is the job page's (gif_client/progress.py)."""
    last: list[str | None] = [None]

    def show(job: dict) -> None:
        line = gif_client.progress_line(job)
        if line != last[0]:
            last[0] = line
            typer.echo(f"[{job['id']}] {line}", err=True)

    return show


def _download_results(client: gif_client.Client, job: dict, output: Path) -> None:
    for entry in (job.get("result") or {}).get("artifacts", []):
        path = client.download(entry["id"], output / f"{entry['kind']}.{entry['format']}")
        typer.echo(f"downloaded {path}", err=True)


@app.command(epilog=EXIT_CODES_HELP)
def submit(
    ctx: typer.Context,
    body: Annotated[Path, typer.Argument(help="JSON file with the job body (see /docs).")],
    wait: bool = typer.Option(False, "--wait", help="Wait until the job is finished."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds to wait at most (with --wait)."),
    idempotency_key: str = typer.Option(
        None, "--idempotency-key", help="Replays return the same job (default: a fresh UUID)."
    ),
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Download all result artifacts into this folder (implies --wait)."),
    ] = None,
    poll: float = typer.Option(None, "--poll", help="Poll interval in seconds (default: Retry-After)."),
    webhook: str = typer.Option(
        None, "--webhook", help="Notify this URL when the job completes (a signed webhook; docs/service.md)."
    ),
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Upload this model (a .pt2 file, or a save_pretrained folder of a Hugging Face "
            "classifier) and use it as the body's `model`.",
        ),
    ] = None,
) -> None:
    """Submit a job; print the job JSON (the final one with --wait). The body's ``model`` may also
    be the path of a model file or ``save_pretrained`` folder (relative to the body's folder): it
    is uploaded first."""

    def action(client: gif_client.Client) -> None:
        spec = json.loads(body.read_text())
        given = model or (body.parent / spec["model"] if isinstance(spec.get("model"), str) else None)
        if given is not None:
            spec["model"] = client.upload_model(given)
        job = client.submit(spec, idempotency_key=idempotency_key, webhook=webhook)
        typer.echo(f"submitted {job['id']}{_estimated(job)}", err=True)
        if wait or output is not None:
            job = client.wait(job["id"], timeout=timeout, poll=poll, on_progress=_progress_printer())
            if output is not None:
                _download_results(client, job, output)
        _print_json(job)

    _run(action, ctx)


@app.command(epilog=EXIT_CODES_HELP)
def status(ctx: typer.Context, job_id: str = typer.Argument(...)) -> None:
    """Print a job's JSON."""
    _run(lambda client: _print_json(client.job(job_id)), ctx)


@app.command("wait", epilog=EXIT_CODES_HELP)
def wait_command(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument()],
    timeout: float = typer.Option(None, "--timeout", help="Seconds to wait at most."),
    poll: float = typer.Option(None, "--poll", help="Poll interval in seconds (default: Retry-After)."),
) -> None:
    """Wait for a job to finish (progress on stderr); print the final job JSON."""
    _run(
        lambda client: _print_json(
            client.wait(job_id, timeout=timeout, poll=poll, on_progress=_progress_printer())
        ),
        ctx,
    )


@app.command(epilog=EXIT_CODES_HELP)
def download(
    ctx: typer.Context,
    artifact_id: Annotated[str, typer.Argument()],
    path: Annotated[Path, typer.Argument(help="Destination file.")],
) -> None:
    """Download an artifact (SHA-256 checked, written atomically)."""
    _run(lambda client: typer.echo(str(client.download(artifact_id, path))), ctx)


@app.command(epilog=EXIT_CODES_HELP)
def cancel(ctx: typer.Context, job_id: str = typer.Argument(...)) -> None:
    """Ask for a job's cancellation; print the job JSON."""
    _run(lambda client: _print_json(client.cancel(job_id)), ctx)


@app.command(epilog=EXIT_CODES_HELP)
def terminate(ctx: typer.Context, job_id: str = typer.Argument(...)) -> None:
    """Admin key: kill the worker process of a job still `cancelling` after the grace period
    (GIF_CANCEL_GRACE_SECONDS); print the job JSON."""
    _run(lambda client: _print_json(client.terminate(job_id)), ctx)


@app.command("jobs", epilog=EXIT_CODES_HELP)
def list_jobs(
    ctx: typer.Context,
    status_filter: str = typer.Option(None, "--status", help="validating, queued, running, ..."),
    limit: int = typer.Option(20, "--limit", min=1, help="How many jobs to print (newest first)."),
) -> None:
    """List jobs as JSON lines."""

    def action(client: gif_client.Client) -> None:
        for job in islice(client.jobs(status=status_filter, limit=min(limit, 100)), limit):
            typer.echo(json.dumps(job))

    _run(action, ctx)


@app.command(epilog=EXIT_CODES_HELP)
def upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="File to upload.")],
    kind: str = typer.Option(..., "--kind", help="checkpoint | dataset | program"),
    resume: str | None = typer.Option(
        None,
        "--resume",
        metavar="UPLOAD_ID",
        help="Finish this upload session, sending only the parts it lacks.",
    ),
    parts: bool = typer.Option(False, "--parts", help="Use an upload session even for a small file."),
) -> None:
    """Upload a checkpoint, dataset or exported program (.pt2); print the artifact JSON. Files over
    512 MiB go in parts through a resumable upload session (its id is in the error if it stops:
    pass it to --resume)."""
    if kind not in ("checkpoint", "dataset", "program"):
        typer.echo("error: --kind must be checkpoint, dataset or program", err=True)
        raise typer.Exit(EXIT_USAGE)

    def action(client):
        if resume or parts:
            return _print_json(client.upload_resumable(path, kind, upload_id=resume))
        return _print_json(client.upload(path, kind))

    _run(action, ctx)
