"""Gradient cache: a repeated removal request, cold (empty cache) vs warm (same request again).

The CPU benchmark model of ``bench/time_to_solution.py`` (TinyNet trained on the digits, 390,410
parameters); the request is ``gif.remove(model, train, {"class": 3})`` with every option at its
default (FIF on the classifier's head, on its features: gif/method_choice.py), and retraining
without the class with the same recipe is timed in the same run (each time ÷ retraining). Each
repeat starts from an empty cache, runs the request once (cold) and again (warm); the cache
is a ``gif.DiskCache`` in a temporary folder, or a ``workers.cache.RedisCache`` on a private
``redis-server`` (started here on a free port; values above 1 MiB in a temporary blob store).
A row without a cache gives the uncached time, so the cold overhead of the cache shows.

    python bench/cache.py [--repeats 3] [--cls 3] [--threads 1] [--no-redis]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import torch

import gif

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))
from digits import CNN, load_digits, train  # noqa: E402


class PrivateRedis:
    """``redis-server`` on a free loopback port in a temporary folder, no persistence."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed; pass --no-redis")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cls", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-redis", action="store_true")
    args = ap.parse_args()
    _common.apply_threads(args.threads)
    s = load_digits(0)
    model = train(CNN, s.x_train, s.y_train, seed=0)
    data = (s.x_train, s.y_train)
    keep = s.y_train != args.cls
    start = time.perf_counter()
    train(CNN, s.x_train[keep], s.y_train[keep], seed=0)
    retraining = time.perf_counter() - start

    def request(cache=None) -> tuple[gif.EditResult, float]:
        start = time.perf_counter()
        out = gif.remove(model, data, {"class": args.cls}, cache=cache)
        return out, time.perf_counter() - start

    tmp = Path(tempfile.mkdtemp(prefix="gif-bench-cache-"))
    redis_server = None if args.no_redis else PrivateRedis(tmp)
    backends = ["none", "disk"] + ([] if args.no_redis else ["redis"])
    runs: dict[str, list[tuple[float, float, dict, dict]]] = {b: [] for b in backends}
    try:
        reference, _ = request()
        for r in range(args.repeats):
            for backend in backends:
                cache = _fresh_cache(backend, tmp / f"{backend}-{r}", redis_server)
                cold, t_cold = request(cache)
                if backend == "none":
                    runs[backend].append((t_cold, float("nan"), cold.report, {}))
                    continue
                warm, t_warm = request(cache)
                assert torch.equal(warm.delta, cold.delta) and torch.equal(cold.delta, reference.delta)
                assert warm.report["hvps"] == 0 and warm.report["gradients"] == 0
                runs[backend].append((t_cold, t_warm, cold.report, warm.report))
                print(f"repeat {r + 1} {backend}: cold {t_cold:.2f} s, warm {t_warm:.3f} s", file=sys.stderr)
    finally:
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    uncached = _common.median([t for t, *_ in runs["none"]])
    rows = [
        [
            "none",
            f"{uncached:.2f}",
            "-",
            "-",
            f"{uncached / retraining:.3f}× / -",
            f"{reference.report['hvps']} / -",
            f"{reference.report['gradients']} / -",
            "-",
        ]
    ]
    for backend in backends[1:]:
        cold = _common.median([c for c, *_ in runs[backend]])
        warm = _common.median([w for _, w, *_ in runs[backend]])
        c_rep, w_rep = runs[backend][0][2], runs[backend][0][3]
        rows.append(
            [
                backend,
                f"{cold:.2f}",
                f"{warm:.3f}",
                f"{cold / warm:.0f}x",
                f"{cold / retraining:.3f}× / {warm / retraining:.4f}×",
                f"{c_rep['hvps']} / {w_rep['hvps']}",
                f"{c_rep['gradients']} / {w_rep['gradients']}",
                f"{len(w_rep['cache']['hits'])} / {len(w_rep['cache']['misses'])}",
            ]
        )
    steps = len(reference.report["newton_steps"])
    evals = sum(st["step"]["evaluations"] for st in reference.report["newton_steps"])
    print(
        f"\nRemove class {args.cls} from the digits TinyNet ({_common.num_params(model):,} parameters), default "
        f"options: {steps} Newton steps, {evals} step-search evaluations; median of {args.repeats} repeats; "
        f"retraining without the class {retraining:.2f} s\n"
    )
    print(
        _common.markdown_table(
            [
                "cache",
                "cold s",
                "warm s",
                "speed-up",
                "÷ retraining cold / warm",
                "HVPs cold / warm",
                "gradients cold / warm",
                "warm hits / misses",
            ],
            rows,
        )
    )
    speedups = ", ".join(f"{r[0]} {r[3]}" for r in rows[1:])
    print(f"\nsummary: warm vs cold speed-up {speedups}; warm runs computed 0 HVPs and 0 gradients")
    print(f"Machine: {_common.machine_description()}")


def _fresh_cache(backend: str, folder: Path, redis_server: PrivateRedis | None):
    if backend == "none":
        return None
    if backend == "disk":
        return gif.DiskCache(folder)
    from jobs.blobs import BlobStore
    from workers.cache import make_cache

    assert redis_server is not None
    return make_cache(
        redis_server.url, folder, BlobStore(folder / "blobs"), namespace=f"bench:{folder.name}:"
    )


if __name__ == "__main__":
    main()
