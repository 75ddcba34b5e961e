"""Upload inspector: ``python -m workers.inspect_artifact --kind K --path P --convert-to Q``.

Runs in a fresh interpreter started by the API (``jobs.inspector``) with a minimal environment
and CPU-time / address-space / file-size limits. With ``--serve`` it imports the readers first,
then reads its arguments as one JSON list on stdin (so the API can start it ahead of an upload);
either way it inspects one file and exits. It reads the file only through ``gif.io`` (safetensors
and npz parsed by hand-checked readers; ``.pt`` only through ``torch.load(weights_only=True)``,
so a malicious pickle is refused, never run; a ``.pt2`` program only after
``gif.io.programs.check_program`` has proven it free of pickles and code, and then without any
unpickling; a Hugging Face job's config only through ``gif.models.huggingface.build``, on the
``meta`` device, never with remote code) and prints one JSON line on stdout:
``{"ok": true, "format", "metadata", "converted"}`` or ``{"ok": false, "code", "message"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from jobs.errors import is_storage_full

#: The answer's code when the conversion could not be written: the server's disk, not the file.
STORAGE_FULL = "storage_full"
#: Largest label accepted in a dataset (label counts are kept per class).
MAX_LABEL = 100_000
_ZIP = b"PK\x03\x04"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    import gif.io  # noqa: F401 (the slow import: served interpreters do it before the request arrives)

    if args.serve:
        line = sys.stdin.readline()
        if not line.strip():  # the API closed the pipe: no upload for this interpreter
            return 0
        args = parser.parse_args(_request_argv(line))
    if not (args.kind and args.path and args.convert_to):
        parser.error("--kind, --path and --convert-to are required")
    _limit_resources(args.cpu_seconds, args.max_output_bytes, args.max_memory_bytes)
    try:
        if args.kind == "checkpoint":
            answer = {"ok": True, **inspect_checkpoint(Path(args.path), Path(args.convert_to))}
        elif args.kind == "program":
            answer = {"ok": True, **inspect_program(Path(args.path))}
        elif args.kind == "huggingface":
            answer = {"ok": True, **inspect_huggingface(Path(args.path))}
        else:
            answer = {"ok": True, **inspect_dataset(Path(args.path))}
    except Exception as exc:  # noqa: BLE001 (every failure becomes a JSON answer)
        code = STORAGE_FULL if is_storage_full(exc) else getattr(exc, "code", "invalid_input")
        answer = {"ok": False, "code": code, "message": _message(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


def inspect_dataset(path: Path) -> dict[str, Any]:
    """Dataset metadata: size, sample shape and dtype, label range and per-class counts, and
    whether it names its samples (``sample_ids``, checked here: one distinct integer per sample)."""
    import gif.io
    from gif.errors import DatasetError

    inputs, labels = gif.io.load_dataset(path)
    top = int(labels.max())
    if top >= MAX_LABEL:
        raise DatasetError(f"labels must be < {MAX_LABEL}; found {top}")
    ids = gif.io.load_sample_ids(path, len(labels))
    meta = gif.io.describe_dataset(inputs, labels, ids)
    meta.update(label_min=int(labels.min()), label_max=top)
    return {
        "format": "npz" if _head(path).startswith(_ZIP) else "safetensors",
        "metadata": meta,
        "converted": False,
    }


def inspect_checkpoint(path: Path, convert_to: Path) -> dict[str, Any]:
    """Checkpoint metadata (tensor names, shapes, dtypes); a ``.pt`` is converted to safetensors."""
    import gif.io

    state = gif.io.load_checkpoint(path)
    meta = gif.io.describe_checkpoint(state)
    head = _head(path)
    if head.startswith((_ZIP, b"\x80")):
        gif.io.save_checkpoint(state, convert_to)
        return {"format": "pt", "metadata": meta, "converted": True}
    header_meta = _safetensors_metadata(path)
    if header_meta:
        meta["header_metadata"] = header_meta
    return {"format": "safetensors", "metadata": meta, "converted": False}


def inspect_program(path: Path) -> dict[str, Any]:
    """An exported program's metadata (input shape and dtype, class count, parameter shapes),
    after the static check, a pickle-free load and one forward pass on a batch of two zero samples."""
    import torch

    from gif.io import programs

    info = programs.check_program(path)
    module = programs.program_module(programs.load_program(path))
    shape = [size for size in info.input_shape if size is not None]
    if len(shape) != len(info.input_shape):
        raise programs.ProgramError("only the batch dimension of the program's input may be dynamic")
    dtype = getattr(torch, info.input_dtype)
    for batch in (1, 2):
        sample = torch.zeros(batch, *shape, dtype=dtype)
        try:
            with torch.no_grad():
                out = module(sample)
        except Exception as exc:  # noqa: BLE001 (whatever the graph raises, the program is unusable)
            raise programs.ProgramError(
                f"the program does not run on a batch of {batch}: {type(exc).__name__}: {str(exc)[:300]}"
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
            raise programs.ProgramError("the program must return logits of shape [batch, classes]")
    meta = info.describe()
    meta["num_classes"] = int(out.shape[1])
    return {"format": "pt2", "metadata": meta, "converted": False}


def inspect_huggingface(path: Path) -> dict[str, Any]:
    """A Hugging Face job's question from the API (a JSON file, jobs/huggingface.py
    ``inspection_request``): the problems that need ``transformers`` to see, as 422 entries."""
    from workers.huggingface import inspect_request

    request = json.loads(path.read_text())
    return {"format": "json", "metadata": {"problems": inspect_request(request)}, "converted": False}


def _safetensors_metadata(path: Path) -> dict[str, str]:
    import safetensors

    with safetensors.safe_open(os.fspath(path), framework="pt", device="cpu") as f:
        found = f.metadata() or {}
    return {str(k)[:128]: str(v)[:1024] for k, v in list(found.items())[:32]}


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text[:2000]


def _request_argv(line: str) -> list[str]:
    argv = json.loads(line)
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or "--serve" in argv:
        raise SystemExit("the request must be a JSON list of arguments")
    return argv


def _limit_resources(cpu_seconds: int, max_output_bytes: int, max_memory_bytes: int) -> None:
    """CPU time and address space on top of what the imports took, and written file size (a
    decompression bomb fails with MemoryError). Relative, because a CUDA build of torch maps
    gigabytes of libraries at import: an absolute cap that fits a CPU build refuses every file
    there (found on an H200: "Cannot allocate memory" for a 10 kB checkpoint)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    for limit, value in (
        (resource.RLIMIT_CPU, cpu_seconds + used if cpu_seconds > 0 else 0),
        (resource.RLIMIT_FSIZE, max_output_bytes),
        (resource.RLIMIT_AS, max_memory_bytes + _mapped_bytes() if max_memory_bytes > 0 else 0),
    ):
        if value > 0:
            resource.setrlimit(limit, (value, value))


def _mapped_bytes() -> int:
    """This process's address space now (Linux ``/proc/self/statm``; 0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="read the other arguments from stdin")
    parser.add_argument("--kind", choices=("checkpoint", "dataset", "program", "huggingface"))
    parser.add_argument("--path")
    parser.add_argument("--convert-to")
    parser.add_argument("--cpu-seconds", type=int, default=300)
    parser.add_argument("--max-output-bytes", type=int, default=8 * 1024**3)
    parser.add_argument(
        "--max-memory-bytes",
        type=int,
        default=0,
        help="address space beyond what the interpreter holds after its imports (0: no limit)",
    )
    return parser


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    os._exit(status)  # the answer is out and files are closed: skip torch's slow interpreter teardown
