"""The upload inspector, run in fresh interpreters that are started ahead of need.

Every upload is read by ``python -m workers.inspect_artifact`` (started by module name so that
this process never imports torch) in an interpreter of its own, with a minimal environment, a
working folder of its own and CPU / memory / file-size limits; it answers one JSON line (see that
module). Starting an interpreter and importing torch costs seconds, so ``Inspector`` keeps
``spares`` interpreters already started and waiting on stdin for their one request. A spare
serves exactly one upload and exits, so isolation is what a fresh process gives; when none is
ready (a burst of uploads, or ``spares=0``) a new one is started for the request.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointUnsafe, InsufficientStorage, InvalidArtifact

INSPECTOR_MODULE = "workers.inspect_artifact"
#: Address space for the inspector beyond what it holds once torch and numpy are imported (a CUDA
#: build maps gigabytes of libraries), besides 4x the file.
INSPECTOR_BASE_MEMORY = 1024**3
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass
class Inspection:
    """What the inspector found: the file's format, its metadata, and a safetensors conversion."""

    format: str
    metadata: dict[str, Any]
    converted: Path | None = None


class _Interpreter:
    """One inspector process, waiting for its request, with a working folder of its own."""

    def __init__(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="gif-inspect-")
        self.proc = subprocess.Popen(
            [sys.executable, "-B", "-m", INSPECTOR_MODULE, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_sandbox_env(self.workdir),
            cwd=self.workdir,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, argv: list[str], timeout: float) -> tuple[bytes, int | None]:
        """Send the request; ``(stdout, exit status)``. Raises ``subprocess.TimeoutExpired``."""
        try:
            stdout, _ = self.proc.communicate((json.dumps(argv) + "\n").encode(), timeout=timeout)
            return stdout, self.proc.returncode
        except subprocess.TimeoutExpired:
            self.close()
            raise
        except OSError:  # it died before reading the request (a broken pipe)
            self.close()
            return b"", self.proc.returncode
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Inspector:
    """Inspects uploads in one-shot interpreters, keeping ``spares`` of them started ahead.

    ``warm`` / ``cold`` count the inspections served by a pre-started interpreter or by one
    started for the request.
    """

    def __init__(self, timeout_seconds: float, spares: int = 1) -> None:
        self.timeout_seconds = timeout_seconds
        self.spares = spares
        self.warm = 0
        self.cold = 0
        self._ready: list[_Interpreter] = []
        self._lock = threading.Lock()
        self._closed = False

    def inspect(self, path: Path, kind: str, convert_to: Path) -> Inspection:
        """Inspect ``path`` as a ``kind`` (checkpoint | dataset | program); a ``.pt`` converts to
        ``convert_to``.

        Raises:
            CheckpointUnsafe: a pickle (or a program) that would execute code.
            InvalidArtifact: anything else that is not a readable checkpoint / dataset / program.
        """
        limit = int(self.timeout_seconds)
        size = path.stat().st_size
        argv = [
            "--kind", kind, "--path", str(path), "--convert-to", str(convert_to),
            "--cpu-seconds", str(limit), "--max-output-bytes", str(2 * size + 64 * 1024 * 1024),
            "--max-memory-bytes", str(INSPECTOR_BASE_MEMORY + 4 * size),
        ]  # fmt: skip
        interpreter = self._take()
        try:
            stdout, status = interpreter.ask(argv, timeout=self.timeout_seconds + 5)
        except subprocess.TimeoutExpired:
            raise InvalidArtifact(f"the file could not be inspected within {limit} s") from None
        return _answer(stdout, status, path, convert_to)

    def check_huggingface(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """A Hugging Face job's checks that need ``transformers`` (jobs/huggingface.py
        ``inspection_request``), in a sandboxed interpreter; returns the problems, as 422 entries
        without the leading ``body``.

        Raises:
            InvalidArtifact: the inspector could not answer (it crashed or timed out).
        """
        folder = Path(tempfile.mkdtemp(prefix="gif-hf-check-"))
        try:
            question = folder / "request.json"
            question.write_text(json.dumps(request))
            found = self.inspect(question, "huggingface", folder / "unused.safetensors")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        problems = found.metadata.get("problems")
        return [p for p in problems if isinstance(p, dict)] if isinstance(problems, list) else []

    def prestart(self) -> None:
        """Start interpreters until ``spares`` are waiting (no-op once closed)."""
        with self._lock:
            for spare in [spare for spare in self._ready if not spare.alive()]:
                self._ready.remove(spare)
                spare.close()
            while not self._closed and len(self._ready) < self.spares:
                self._ready.append(_Interpreter())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
        for spare in ready:
            spare.close()

    def _take(self) -> _Interpreter:
        spare = self._pop_ready()
        if spare is None:
            self.cold += 1
            spare = _Interpreter()
        else:
            self.warm += 1
        self.prestart()  # the next upload's interpreter imports torch while this one works
        return spare

    def _pop_ready(self) -> _Interpreter | None:
        with self._lock:
            while self._ready:
                spare = self._ready.pop(0)
                if spare.alive():
                    return spare
                spare.close()
        return None


def _answer(stdout: bytes, status: int | None, path: Path, convert_to: Path) -> Inspection:
    answer = _last_json_line(stdout)
    if answer is None:
        raise InvalidArtifact(f"the file could not be inspected (the inspector exited with status {status})")
    if not answer.get("ok"):
        if answer.get("code") == "storage_full":
            raise InsufficientStorage.disk_full()
        error = CheckpointUnsafe if answer.get("code") == "checkpoint_unsafe" else InvalidArtifact
        message = str(answer.get("message", "invalid artifact")).replace(str(path), "the upload")
        raise error(message[:2000])
    converted = convert_to if answer.get("converted") else None
    return Inspection(format=str(answer["format"]), metadata=dict(answer["metadata"]), converted=converted)


def _sandbox_env(workdir: str) -> dict[str, str]:
    """No credentials, no API keys: only what Python needs to find the packages."""
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    roots = []
    for package in ("workers", "gif"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            roots.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    env.update(
        PYTHONPATH=os.pathsep.join(dict.fromkeys(roots)),
        HOME=workdir,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _last_json_line(stdout: bytes) -> dict[str, Any] | None:
    for line in reversed(stdout.decode("utf-8", "replace").strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
