"""One GIF solve on a paper-size model: peak memory and seconds per HVP ÷ one gradient.

The cost issue's target (docs/benchmarks.md, "A GIF solve at ResNet-18 scale"): a GIF solve on
ResNet-18 at full width (11.2 M parameters) over 512 Hessian samples within 3 GiB peak RSS, at
≤ 3× a gradient per HVP. Per model, in a fresh process each (so one row's high-water mark cannot
hide in another's):

1. the engine's operator over the samples at its defaults (``hvp_backend="auto"``, chunks sized
   from the memory budget, gif/memory.py): which back end and chunk sizes it chose;
2. one gradient of the mean loss over all samples (``HessianOperator.gradient``), timed;
3. ``gif.influence(model, data, data[:--target], method="gif", damping=0.01, max_iter=--max-iter)``
   at the engine's defaults otherwise, timed; seconds per HVP = its time ÷ its HVPs (the target
   gradient, 32 samples, is included and is ~1% of it);
4. peak RSS of the process (``ru_maxrss``; the model, data and interpreter are in it, so it is
   what a worker would need).

    python bench/solve_scale.py                                  # resnet18, 512 samples, ~10 minutes on 1 thread
    python bench/solve_scale.py --models resnet18-w16,vgg11-w16 --samples 512
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import _common as C

import gif
from gif.hessian import HessianOperator


def run_child(spec: dict) -> dict:
    C.apply_threads(spec["threads"])
    model = C.model_spec(spec["model"]).build(spec["seed"])
    x, y, _ = C.make_data(
        spec["samples"], C.model_spec(spec["model"]).input_shape, synthetic=True, seed=spec["seed"]
    )
    defaults = gif.SolveConfig()
    warm = HessianOperator(model, (x[:2], y[:2]))  # first calls of a process set up kernels once: untimed
    warm.hvp(warm.gradient())
    op = HessianOperator(model, (x, y), chunk_size=defaults.chunk_size, memory_budget=defaults.memory_budget)
    start = time.perf_counter()
    op.gradient()
    gradient = time.perf_counter() - start
    start = time.perf_counter()
    out = gif.influence(
        model, (x, y), (x[: spec["target"]], y[: spec["target"]]), method="gif", damping=0.01,
        max_iter=spec["max_iter"],
    )  # fmt: skip
    solve = time.perf_counter() - start
    return {
        "params": C.num_params(model),
        "backend": op.backend,
        "chunks": sorted({len(c) for c in op.data}, reverse=True),
        "gradient_s": gradient,
        "hvps": out.hvps,
        "solve_s": solve,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--child", help=argparse.SUPPRESS)
    add(
        "--models",
        type=C.str_list,
        default=["resnet18"],
        help=f"from: {', '.join(C.MODELS)} (default resnet18)",
    )
    add("--samples", type=int, default=512, help="Hessian samples (default 512)")
    add("--target", type=int, default=32, help="samples whose influence is solved for (default 32)")
    add(
        "--max-iter",
        type=int,
        default=2,
        help="LSQR iterations (default 2: two HVPs each, the peak is in the first)",
    )
    add("--threads", type=int, default=1, help="torch threads (default 1)")
    add("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.child is not None:
        return C.answer_as_child(args.child, run_child)
    for name in args.models:
        C.model_spec(name)
    C.apply_threads(args.threads)  # as the children do: the machine line reports it
    rows = []
    for name in args.models:
        spec = {"model": name, "samples": args.samples, "target": args.target, "max_iter": args.max_iter,
                "threads": args.threads, "seed": args.seed}  # fmt: skip
        r = C.in_child(__file__, spec)
        if "error" in r:
            print(f"{name}: {r['error']}", file=sys.stderr)
            return 1
        per_hvp = r["solve_s"] / max(r["hvps"], 1)
        rows.append([
            name, f"{r['params']:,}", args.samples, f"{r['backend']}, chunks {r['chunks']}",
            f"{r['gradient_s']:.1f}", r["hvps"], f"{r['solve_s']:.1f}", f"{per_hvp / r['gradient_s']:.2f}",
            f"{r['peak_rss_gib']:.2f}",
        ])  # fmt: skip
        print(f"  done {name}", file=sys.stderr, flush=True)
    print(f"\n{C.machine_description()}\n")
    headers = ["model", "params", "samples", "HVP back end", "gradient s", "HVPs", "solve s",
               "s per HVP ÷ gradient", "peak RSS GiB"]  # fmt: skip
    print(C.markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
