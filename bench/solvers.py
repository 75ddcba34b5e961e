"""Which solver for which influence system: HVPs and seconds to reach a residual.

Problems (TinyNet trained on digits, remove one class; H from retained training samples):

* ``gif`` — min ‖H[:,T]x − g‖² + λ‖x‖², T = 5% highest-gradient neurons (least squares);
* ``if``  — (H + λI) z = g over all parameters (symmetric, indefinite H);
* ``fif`` — (H[T,T] + λI) x = g[T].

For each solver: HVPs (and seconds) until the relative residual first drops below 1e-1, 1e-2,
1e-4, and the residual after the iteration budget. Residuals are the solver-independent ones of
``gif.solvers.base.SolveResult`` (normal-equation residual for least squares). The paper's
Neumann series reports its own step size per iteration, so it is run to fixed budgets and its
true residual computed at the end.

    python bench/solvers.py [--damping 0.01] [--budget 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import gif

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits import CNN, load_digits, train

THRESHOLDS = (1e-1, 1e-2, 1e-4)
HVPS_PER_ITER = {("symmetric", "cg"): 1, ("symmetric", "minres"): 1}  # everything else: 2


def first_below(history: list[float], threshold: float, per_iter: int) -> str:
    for i, r in enumerate(history):
        if r <= threshold:
            return str((i + 1) * per_iter)
    return "—"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cls", type=int, default=3)
    ap.add_argument("--damping", type=float, default=0.01)
    ap.add_argument("--budget", type=int, default=200, help="iterations per solver")
    ap.add_argument("--hessian-samples", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = load_digits(0)
    model = train(CNN, s.x_train, s.y_train, seed=0)
    retained = torch.nonzero(s.y_train != args.cls).flatten()[: args.hessian_samples]
    hessian = (s.x_train[retained], s.y_train[retained])
    forget = torch.nonzero(s.y_train == args.cls).flatten()
    target = (s.x_train[forget], s.y_train[forget])
    subset = gif.select(model, target, strategy="highest_gradients", ratio=0.05)

    print(
        f"### Solvers, TinyNet on digits, λ = {args.damping}, budget {args.budget} iterations, "
        f"|T| = {subset.numel()} of {gif.params.ParamSpace(model).size}\n"
    )
    print(
        "| system | solver | HVPs to 1e-1 | HVPs to 1e-2 | HVPs to 1e-4 | residual at budget | HVPs | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method in ("gif", "if", "fif"):
        params = None if method == "if" else subset
        kind = "lstsq" if method == "gif" else "symmetric"
        for solver in ("cg", "minres", "lsqr"):
            start = time.perf_counter()
            out = gif.influence(
                model,
                hessian,
                target,
                method=method,
                params=params,
                damping=args.damping,
                solver=solver,
                tol=1e-6,
                max_iter=args.budget,
            )
            seconds = time.perf_counter() - start
            per = HVPS_PER_ITER.get((kind, solver), 2)
            marks = [first_below(out.history, t, per) for t in THRESHOLDS]
            note = " (stopped: negative curvature)" if "curvature" in out.note else ""
            print(
                f"| {method} | {solver} | {' | '.join(marks)} | {out.residual:.1e}{note} | {out.hvps} | {seconds:.2f} |"
            )
        for iters in (20, args.budget):
            start = time.perf_counter()
            out = gif.influence(
                model,
                hessian,
                target,
                method=method,
                params=params,
                damping=args.damping,
                solver="neumann",
                tol=1e-9,
                max_iter=iters,
            )
            seconds = time.perf_counter() - start
            print(
                f"| {method} | neumann ({iters} it) | | | | {out.residual:.1e} | {out.hvps} | {seconds:.2f} |"
            )


if __name__ == "__main__":
    main()
