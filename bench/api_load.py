"""API latency and throughput under concurrent clients, on loopback.

Starts ``gif-service serve`` on a free port with a fresh ``GIF_HOME`` and no workers
(``GIF_WORKERS=0``: jobs stay queued, so this measures the API and its SQLite job store, not
the engine), uploads the bundled quick-start artifacts, then runs ``--clients`` threads for
``--seconds``: each loops over status polls (``GET /v1/jobs/{id}``) and, with probability
``--submit-share``, submissions (``POST /v1/jobs``). Prints p50/p95/p99 latency, throughput and
the error count per request kind. Bounded in time; talks only to 127.0.0.1.

    python bench/api_load.py [--clients 16] [--seconds 20] [--submit-share 0.1]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "examples" / "quickstart"
KEY = "bench-key"
MODEL = {"arch": "mlp", "config": {"input_shape": [1, 8, 8], "hidden_sizes": [64], "num_classes": 10}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: str, port: int) -> subprocess.Popen:
    # no admission limits: this measures raw capacity (16 clients of one tenant, thousands of jobs)
    env = {
        **os.environ,
        "GIF_HOME": home,
        "GIF_API_KEYS": f"bench:{KEY}",
        "GIF_WORKERS": "0",
        "GIF_RATE_LIMIT_PER_SECOND": "0",
        "GIF_MAX_ACTIVE_JOBS_PER_TENANT": "0",
        "GIF_MAX_WAITING_JOBS": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--submit-share", type=float, default=0.1)
    args = ap.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {KEY}"}
    with tempfile.TemporaryDirectory() as home:
        server = start_server(home, port)
        try:
            with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
                ids = {}
                for kind, name in (("checkpoint", "model"), ("dataset", "train")):
                    with open(BUNDLE / f"{name}.safetensors", "rb") as f:
                        ids[kind] = c.post("/v1/artifacts", data={"kind": kind}, files={"file": f}).json()[
                            "id"
                        ]
                body = {
                    "type": "remove",
                    "model": {**MODEL, "checkpoint": ids["checkpoint"]},
                    "train": ids["dataset"],
                    "forget": {"class": 3},
                }
                first = c.post("/v1/jobs", json=body).json()["id"]
            samples: dict[str, list[float]] = {"status": [], "submit": []}
            errors = {"status": 0, "submit": 0}
            lock = threading.Lock()
            stop = time.time() + args.seconds

            def client_loop(seed: int) -> None:
                rng = random.Random(seed)
                with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
                    job_id = first
                    while time.time() < stop:
                        kind = "submit" if rng.random() < args.submit_share else "status"
                        start = time.perf_counter()
                        try:
                            if kind == "submit":
                                r = c.post("/v1/jobs", json=body)
                                ok = r.status_code == 202
                                if ok:
                                    job_id = r.json()["id"]
                            else:
                                ok = c.get(f"/v1/jobs/{job_id}").status_code == 200
                        except httpx.HTTPError:
                            ok = False
                        elapsed = time.perf_counter() - start
                        with lock:
                            samples[kind].append(elapsed)
                            errors[kind] += 0 if ok else 1

            threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"### API load, {args.clients} clients, {args.seconds:.0f} s, submit share {args.submit_share}, "
        f"embedded mode (SQLite), no workers\n"
    )
    print("| request | count | throughput /s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for kind, values in samples.items():
        if not values:
            continue
        ms = [v * 1000 for v in values]
        print(
            f"| {kind} | {len(ms)} | {len(ms) / args.seconds:.1f} | {statistics.median(ms):.1f} | "
            f"{percentile(ms, 0.95):.1f} | {percentile(ms, 0.99):.1f} | {errors[kind]} |"
        )


if __name__ == "__main__":
    main()
