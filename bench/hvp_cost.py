"""Cost of one Hessian-vector product relative to one gradient, per HVP back end.

For each model and sample count it times, over the same chunked data (``--chunk-size``):

* gradient     ``HessianOperator.gradient()`` (torch.func grad, chunk by chunk);
* func         ``HessianOperator(backend="func").hvp(v)``: forward-over-reverse jvp(grad);
* graph 1st    the first ``hvp`` of a fresh ``backend="graph"`` operator, which builds and keeps
               every chunk's first-order gradient graph (create_graph=True);
* graph        later ``hvp`` calls of that operator: one double-backward through the kept graph;
* linearized 1st, linearized   the same for ``backend="linearized"``: the first call linearises
               every chunk's product at θ (torch.func.linearize), later ones replay the tangent and
               backward passes without a forward;
* paper        the official GIF code's HVP: every call re-runs forward + ``autograd.grad(...,
               create_graph=True)`` on the module's parameters, then ``autograd.grad(grads·v)``.

Each time is the median of ``--repeats`` calls after ``--warmup`` untimed ones; "graph 1st" and
"linearized 1st" build a fresh operator for each timed call (construction itself is not timed). The ratio columns are
HVP time / gradient time (the engine targets ≤ 2.5 for ``func``). The last column is the largest
relative difference between the back ends' H·v, a sanity check that they compute the same thing.
``--curvature gauss_newton`` times products with the Gauss–Newton matrix instead (gif/hessian.py;
no paper column: the official code has none).

Examples::

    python bench/hvp_cost.py                              # defaults, about a minute on 2 cores
    python bench/hvp_cost.py --threads 1 --repeats 2 --samples 64
    python bench/hvp_cost.py --models tinynet-8,vgg11-w16 --samples 256,2048,8192 --repeats 10
    python bench/hvp_cost.py --curvature gauss_newton
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as C
import torch

from gif.config import CURVATURES
from gif.hessian import HessianOperator, cross_entropy

DEFAULT_MODELS = "tinynet-8,lenet-28,mlp-64,mlp-256x256"
TARGET_RATIO = 2.5


def paper_hvp(model: torch.nn.Module, op: HessianOperator, v: torch.Tensor) -> torch.Tensor:
    """H·v as the official GIF code computes it: the gradient graph is rebuilt on every call.

    Uses the operator's chunks and weights so that it is the same mean-loss Hessian; everything
    else is plain ``torch.autograd`` on the module's own parameters.
    """
    space = op.flat.space
    named = dict(model.named_parameters())
    params = [named[s.name] for s in space.slots]
    vs = list(space.unflatten(v).values())
    out = [torch.zeros_like(p) for p in params]
    for chunk in op.data:
        loss = cross_entropy(model(chunk.inputs), chunk.targets)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * vi).sum() for g, vi in zip(grads, vs, strict=True))
        hv = torch.autograd.grad(dot, params)
        for acc, h in zip(out, hv, strict=True):
            acc.add_(h, alpha=chunk.weight)
    return torch.cat([t.reshape(-1) for t in out])


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def bench_one(name: str, samples: int, args: argparse.Namespace, device: torch.device) -> dict:
    spec = C.model_spec(name)
    model = spec.build(args.seed).to(device)
    x, y, source = C.make_data(samples, spec.input_shape, synthetic=args.synthetic, seed=args.seed)
    data = (x.to(device), y.to(device))
    kw = {"chunk_size": args.chunk_size, "curvature": args.curvature}
    func = HessianOperator(model, data, backend="func", **kw)
    gen = torch.Generator().manual_seed(args.seed + 1)
    v = torch.randn(func.size, generator=gen).to(device)
    v /= v.norm()
    out: dict[str, torch.Tensor] = {}

    def timed(key: str, fn) -> float:
        def call() -> None:
            out[key] = fn()

        return C.median(C.time_calls(call, repeats=args.repeats, warmup=args.warmup, device=device))

    row = {"model": name, "params": func.size, "samples": samples, "source": source}
    row["grad"] = timed("grad", func.gradient)
    row["func"] = timed("func", lambda: func.hvp(v))

    # the cached back ends: the first call builds what they keep, so it gets a fresh operator each time
    def first_and_later(backend: str) -> tuple[float, float]:
        """(median first ``hvp`` of a fresh ``backend`` operator, median later ``hvp`` of one)."""
        first_times = []
        op = None
        for i in range(args.warmup + args.repeats):
            if op is not None:
                op.release()
            op = HessianOperator(model, data, backend=backend, **kw)
            C.sync(device)
            start = time.perf_counter()
            out[backend] = op.hvp(v)
            C.sync(device)
            if i >= args.warmup:
                first_times.append(time.perf_counter() - start)
        assert op is not None
        later = timed(backend, lambda: op.hvp(v))
        op.release()
        return C.median(first_times), later

    for backend in CACHED:
        row[f"{backend}1"], row[backend] = first_and_later(backend)

    if not args.no_paper:
        row["paper"] = timed("paper", lambda: paper_hvp(model, func, v))
    diffs = [rel_diff(out["func"], out[k]) for k in (*CACHED, "paper") if k in out]
    row["diff"] = max(diffs) if diffs else None
    return row


#: The back ends that keep something per chunk, built by their first product (gif/hessian.py).
CACHED = ("graph", "linearized")


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    add = parser.add_argument
    add("--models", type=C.str_list, default=C.str_list(DEFAULT_MODELS),
        help=f"comma-separated, from: {', '.join(C.MODELS)} (default {DEFAULT_MODELS})")  # fmt: skip
    add("--samples", type=C.int_list, default=[256, 2048], help="sample counts (default 256,2048)")
    add("--chunk-size", type=int, default=1024, help="samples per forward pass (default 1024, as the engine)")
    add("--repeats", type=int, default=5, help="timed calls per measurement, the median is shown (default 5)")
    add("--warmup", type=int, default=1, help="untimed calls before each measurement (default 1)")
    add("--no-paper", action="store_true", help="skip the paper-style HVP (gradient graph rebuilt per call)")
    add("--curvature", choices=CURVATURES, default="hessian", help="what H·v multiplies by (default hessian)")
    C.add_common_args(parser)
    args = parser.parse_args(argv)
    args.no_paper = args.no_paper or args.curvature != "hessian"
    if args.repeats < 1 or args.warmup < 0 or args.chunk_size < 1:
        parser.error("--repeats and --chunk-size must be >= 1, --warmup >= 0")
    for name in args.models:
        C.model_spec(name)
    C.apply_threads(args.threads)
    device = C.resolve_device(args.device)

    rows = []
    for name in args.models:
        for n in args.samples:
            row = bench_one(name, n, args, device)
            rows.append(row)
            print(f"  done {name} n={n}: grad {C.fmt_ms(row['grad'])} ms, func {C.fmt_ms(row['func'])} ms",
                  file=sys.stderr, flush=True)  # fmt: skip

    kinds = ["func", "graph1", "graph", "linearized1", "linearized"] + ([] if args.no_paper else ["paper"])
    label = {"func": "func", "graph1": "graph 1st", "graph": "graph", "linearized1": "linearized 1st",
             "linearized": "linearized", "paper": "paper"}  # fmt: skip
    headers = ["model", "params", "samples", "gradient ms"]
    headers += [f"{label[k]} ms" for k in kinds] + [f"{label[k]} ×" for k in kinds] + ["max rel. diff"]
    table = []
    for r in rows:
        cells = [r["model"], f"{r['params']:,}", r["samples"], C.fmt_ms(r["grad"])]
        cells += [C.fmt_ms(r[k]) for k in kinds]
        cells += [C.fmt_ratio(r[k] / r["grad"]) for k in kinds]
        cells.append("-" if r["diff"] is None else f"{r['diff']:.1e}")
        table.append(cells)

    sources = sorted({r["source"] for r in rows})
    print(f"\n### HVP cost / gradient cost ({args.curvature}, {device.type}, chunk_size {args.chunk_size}, "
          f"median of {args.repeats}, inputs: {'/'.join(sources)})\n")  # fmt: skip
    print(C.markdown_table(headers, table))
    print(f"\nMachine: {C.machine_description(device)}\n")

    ratios = {k: [r[k] / r["grad"] for r in rows] for k in kinds}
    worst = max(rows, key=lambda r: r["func"] / r["grad"])
    parts = [f"{label[k]} {C.median(ratios[k]):.2f}x" for k in kinds]
    verdict = "within" if max(ratios["func"]) <= TARGET_RATIO else "ABOVE"
    print(
        f"summary: median HVP/gradient over {len(rows)} configs: {', '.join(parts)}; "
        f"worst func {max(ratios['func']):.2f}x ({worst['model']}, n={worst['samples']}) "
        f"{verdict} target {TARGET_RATIO}x; max rel. diff {max((r['diff'] or 0.0) for r in rows):.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
