"""Peak memory of one Hessian-vector product and of a GIF solve, per HVP back end and chunk size.

Each configuration (model, samples, chunk size, back end) runs in a fresh Python process, so one
configuration's memory cannot hide in another's high-water mark. Inside it:

1. build the model and the data, and warm up on 4 samples (an HVP and a gradient with both back
   ends, a 1-iteration solve): the first torch.func/autograd calls of a process set up tens of
   MiB once (kernels, thread pools, functorch state), which is not the cost being measured;
2. take a baseline, then run one ``HessianOperator(...).hvp(v)`` call over all samples
   → "HVP" column (for ``graph`` this includes building and keeping every chunk's gradient graph);
3. free everything, take a new baseline, then run ``gif.influence(model, data, data[:target],
   method="gif", solver="lsqr", max_iter=--max-iter, tol=1e-30, ...)`` → "solve" column.

What is measured:

* CPU: the rise of ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` above the baseline. The kernel's
  peak-RSS counter is reset at each baseline (``/proc/self/clear_refs``, Linux ≥ 4.0) when
  possible, so a transient peak during set-up cannot mask a smaller one later; without the reset
  the baseline is ru_maxrss after set-up. Before each baseline, glibc's ``malloc_trim(0)`` hands
  freed memory back to the OS, so step 3 cannot silently reuse what step 2 freed (``--isolate``
  runs steps 2 and 3 in separate processes instead, the strictest and slowest option).
* CUDA: ``torch.cuda.max_memory_allocated()`` above ``memory_allocated()`` at the baseline
  (tensors only, not the caching allocator's reserve or the CUDA context).

With the ``func`` back end the peak should grow with the chunk size and not with the number of
samples (one chunk's activations at a time); with ``graph`` and ``linearized`` it grows with the
samples, and their HVP peak should stay below the "graph estimate" column (``HessianOperator.estimate_graph_bytes``,
what ``hvp_backend="auto"`` compares with its budget).

LSQR reaches its peak in the first iteration (every iteration does the same two HVPs and keeps
the same few p-vectors), so the default ``--max-iter 2`` measures the same peak as the 20 of a
production solve in a fraction of the time; pass ``--max-iter 20`` to run the full solve.

Examples::

    python bench/memory.py                                  # defaults, about 2 minutes on 2 cores
    python bench/memory.py --models lenet-28 --samples 64 --chunks 16 --max-iter 2
    python bench/memory.py --samples 256,1024,4096 --chunks 64,256,1024 --max-iter 20 --timeout 1800
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import resource
import sys
from concurrent.futures import ThreadPoolExecutor

import _common as C
import torch

import gif
from gif.config import CURVATURES, HVP_BACKENDS
from gif.hessian import HessianOperator
from gif.memory import HELD_BACKENDS

DEFAULT_MODELS = "tinynet-28,lenet-28,vgg11-w16,resnet18-w16"
DEFAULT_JOBS = min(2, os.cpu_count() or 1)
#: The HVP back ends (gif/hessian.py).
BACKENDS = tuple(backend for backend in HVP_BACKENDS if backend != "auto")
TINY_TOL = 1e-30  # the solve runs all --max-iter iterations (the engine needs tol > 0)


# ---------------------------------------------------------------------------------------------
# child process: one configuration


class PeakMeter:
    """Peak memory above a baseline: CUDA allocator statistics or the process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset_ok = False
        self.baseline = 0

    def start(self) -> None:
        gc.collect()
        if self.device.type != "cuda":
            _release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        self.reset_ok = _reset_peak_rss()
        self.baseline = _maxrss_bytes()

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _maxrss_bytes()
        return max(0, peak - self.baseline) / 2**20

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "ru_maxrss" + (" (peak reset at baseline)" if self.reset_ok else " (no peak reset)")


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # KiB on Linux, bytes on macOS


def _release_free_memory() -> None:
    """Hand memory that glibc keeps after ``free`` back to the OS, so that the next measurement
    has to fault its pages in again instead of reusing them unseen (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5": reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def run_child(cfg: dict) -> dict:
    C.apply_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    spec = C.model_spec(cfg["model"])
    model = spec.build(cfg["seed"]).to(device)
    x, y, source = C.make_data(cfg["samples"], spec.input_shape, synthetic=cfg["synthetic"], seed=cfg["seed"])
    x, y = x.to(device), y.to(device)
    chunk, backend = cfg["chunk"], cfg["backend"]
    # Warm-up on a few samples, untimed and unmeasured: the first torch.func and autograd calls
    # set up tens of MiB once per process (kernels, thread pools, functorch state).
    tiny = (x[:4], y[:4])
    for b in BACKENDS:
        warm = HessianOperator(model, tiny, chunk_size=2, backend=b, curvature=cfg["curvature"])
        warm.hvp(torch.ones(warm.size, device=device))
        warm.gradient()
        warm.release()
    p = warm.size
    del warm
    ratio = cfg["param_ratio"]
    params = None if ratio >= 1.0 else {"strategy": "random", "ratio": ratio}
    gif.influence(
        model,
        tiny,
        tiny,
        method="gif",
        solver="lsqr",
        max_iter=1,
        chunk_size=2,
        hvp_backend=backend,
        params=params,
    )
    meter = PeakMeter(device)
    result = {"params": p, "source": source}

    def hvp() -> float:
        op = HessianOperator(model, (x, y), chunk_size=chunk, backend=backend, curvature=cfg["curvature"])
        result["graph_estimate"] = op.estimate_graph_bytes() / 2**20  # what ``auto`` compares to its budget
        v = torch.randn(p, generator=torch.Generator().manual_seed(1)).to(device)
        op.hvp(v)  # one call: the peak of every later call is the same (func) or lower (graph)
        return meter.peak_mib()

    def solve() -> float:
        t = min(cfg["target"], cfg["samples"])
        res = gif.influence(
            model, (x, y), (x[:t], y[:t]), method="gif", solver="lsqr", max_iter=cfg["max_iter"],
            tol=TINY_TOL, chunk_size=chunk, hvp_backend=backend, params=params, seed=cfg["seed"],
            curvature=cfg["curvature"],
        )  # fmt: skip
        result["iterations"] = res.iterations
        return meter.peak_mib()

    for what, fn in (("hvp", hvp), ("solve", solve)):
        if what not in cfg["what"]:
            continue
        meter.start()
        try:
            result[what] = fn()
        except Exception as exc:  # report it in the table, keep the other measurement
            result.setdefault("errors", []).append(f"{what}: {type(exc).__name__}: {exc}")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        else:
            _release_free_memory()
    result["method"] = meter.method
    return result


# ---------------------------------------------------------------------------------------------
# parent process: the grid, the table


def spawn(cfg: dict, timeout: float) -> dict:
    out = C.in_child(__file__, cfg, timeout)
    if out.get("errors"):
        out["error"] = "; ".join(out.pop("errors"))
    return out


def grid(args: argparse.Namespace) -> list[tuple[str, int, int, str]]:
    """(model, samples, chunk, backend). A chunk size >= the sample count means "unchunked"; such
    pairs are kept (as chunk = samples) only with ``--all-pairs`` or when no chunk size is smaller."""
    rows = []
    for name in args.models:
        for n in args.samples:
            chunks = sorted({min(c, n) for c in args.chunks})
            if not args.all_pairs and len(chunks) > 1:
                chunks = [c for c in chunks if c < n]
            for c in chunks:
                for b in args.backends:
                    rows.append((name, n, c, b))
    return rows


def growth(rows: list[dict], backend: str, vary: str) -> tuple[float, int, int] | None:
    """Median over models of peak(HVP) at the largest / smallest ``vary`` ("samples" or "chunk"),
    the other variable held fixed (smallest chunk / largest sample count), with the range."""
    fixed = "chunk" if vary == "samples" else "samples"
    found = []
    for name in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == name and r["backend"] == backend and "hvp" in r]
        if not mine:
            continue
        at = (min if vary == "samples" else max)(r[fixed] for r in mine)
        line = sorted((r for r in mine if r[fixed] == at), key=lambda r: r[vary])
        if len(line) >= 2 and line[0]["hvp"] > 0:
            found.append((line[-1]["hvp"] / line[0]["hvp"], line[0][vary], line[-1][vary]))
    if not found:
        return None
    return C.median([f[0] for f in found]), min(f[1] for f in found), max(f[2] for f in found)


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    add = parser.add_argument
    add("--child", help=argparse.SUPPRESS)
    add("--models", type=C.str_list, default=C.str_list(DEFAULT_MODELS),
        help=f"comma-separated, from: {', '.join(C.MODELS)} (default {DEFAULT_MODELS})")  # fmt: skip
    add("--samples", type=C.int_list, default=[64, 256], help="Hessian sample counts (default 64,256)")
    add("--chunks", type=C.int_list, default=[16, 64], help="chunk sizes (default 16,64)")
    add("--backends", type=C.str_list, default=["func", "graph"],
        help=f"from {','.join(BACKENDS)} (default func,graph)")  # fmt: skip
    add(
        "--curvature",
        choices=CURVATURES,
        default="hessian",
        help="what the HVPs multiply by (default hessian)",
    )
    add("--max-iter", type=int, default=2, help="LSQR iterations of the solve (default 2; see above)")
    add("--target", type=int, default=32, help="target samples of the solve (default 32)")
    add("--param-ratio", type=float, default=0.05,
        help="fraction of parameters (random selection) the solve moves; 1 = all (default 0.05)")  # fmt: skip
    add("--all-pairs", action="store_true", help="also run chunk sizes >= the sample count (unchunked)")
    add("--no-solve", action="store_true", help="measure the HVP only")
    add("--isolate", action="store_true", help="separate processes for the HVP and the solve")
    add("--jobs", type=int, default=DEFAULT_JOBS,
        help=f"configurations measured at once, one process each (default {DEFAULT_JOBS})")  # fmt: skip
    add("--timeout", type=float, default=600, help="seconds per child process (default 600)")
    C.add_common_args(parser, synthetic_default=True)
    args = parser.parse_args(argv)

    if args.child is not None:
        return C.answer_as_child(args.child, run_child)

    for name in args.models:
        C.model_spec(name)
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad or min(args.max_iter, args.target, args.jobs) < 1 or not 0 < args.param_ratio <= 1:
        parser.error(
            f"--backends takes {','.join(BACKENDS)}; --max-iter, --target and --jobs must be >= 1; "
            "--param-ratio must be in (0, 1]"
        )
    C.apply_threads(args.threads)
    device = C.resolve_device(args.device)

    whats = [["hvp"]] + ([] if args.no_solve else [["solve"]])
    if not args.isolate:
        whats = [[w for ws in whats for w in ws]]

    def measure(point: tuple[str, int, int, str]) -> dict:
        name, n, chunk, backend = point
        row = {"model": name, "samples": n, "chunk": chunk, "backend": backend}
        for what in whats:
            cfg = {
                "model": name, "samples": n, "chunk": chunk, "backend": backend, "what": what,
                "device": str(device), "threads": args.threads, "seed": args.seed,
                "synthetic": args.synthetic, "max_iter": args.max_iter, "target": args.target,
                "param_ratio": args.param_ratio, "curvature": args.curvature,
            }  # fmt: skip
            out = spawn(cfg, args.timeout)
            if "error" in out:
                row.setdefault("errors", []).append(out["error"])
            row.update({k: v for k, v in out.items() if k != "error"})
        status = "; ".join(row.get("errors", [])) or ", ".join(
            f"{k} {row[k]:.1f} MiB" for k in ("hvp", "solve") if k in row
        )
        print(f"  done {name} n={n} chunk={chunk} {backend}: {status}", file=sys.stderr, flush=True)
        return row

    # Each configuration is its own process, so running a few at once does not change what they
    # measure (peak RSS and CUDA statistics are per process); it only needs the cores and memory.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(measure, grid(args)))

    def cell(r: dict, key: str) -> str:
        if key in r:
            return f"{r[key]:.1f}"
        return "error" if "errors" in r else "-"

    headers = ["model", "params", "samples", "chunk", "backend", "peak MiB (HVP)", "graph estimate MiB",
               "peak MiB (solve)"]  # fmt: skip
    table = [
        [r["model"], f"{r['params']:,}" if "params" in r else "-", r["samples"], r["chunk"], r["backend"],
         cell(r, "hvp"), cell(r, "graph_estimate") if r["backend"] in HELD_BACKENDS else "", cell(r, "solve")]
        for r in rows
    ]  # fmt: skip
    method = next((r["method"] for r in rows if "method" in r), "n/a")
    source = next((r["source"] for r in rows if "source" in r), "n/a")
    solve = "no solve" if args.no_solve else (
        f"solve: gif/lsqr, {args.max_iter} iterations, {args.target} target samples, "
        f"{'all' if args.param_ratio >= 1 else f'{args.param_ratio:g} random'} parameters"
    )  # fmt: skip
    print(f"\n### Peak memory above baseline ({device.type}: {method}; {solve}; inputs: {source})\n")
    print(C.markdown_table(headers, table))
    print(f"\nMachine: {C.machine_description(device)}\n")
    for r in rows:
        for e in r.get("errors", []):
            print(f"error: {r['model']} n={r['samples']} chunk={r['chunk']} {r['backend']}: {e}")

    parts = []
    for backend in args.backends:
        text = []
        for vary in ("samples", "chunk"):
            g = growth(rows, backend, vary)
            if g is not None:
                text.append(f"x{g[0]:.2f} for {vary} {g[1]}->{g[2]}")
        if text:
            parts.append(f"{backend} " + ", ".join(text))
    ok = sum("errors" not in r for r in rows)
    grown = "; ".join(parts) or "n/a (needs two sample counts or chunk sizes)"
    print(f"summary: HVP peak growth (median over models): {grown}; {ok}/{len(rows)} configs measured")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
