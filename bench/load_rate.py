"""Hold a stated request rate against the API for a stated time (open loop), on loopback.

Starts ``gif-service serve`` (embedded, no workers: submissions stay queued, so this measures the
API and its job store), uploads the bundled quick-start artifacts, then issues status polls at
``--status-rate`` per second and submissions at ``--submit-rate`` per second for ``--seconds``,
each request started at its scheduled time whatever the latency of the others (open loop: a slow
server shows up as latency, not as a lower request rate). Prints, per kind: requests, achieved
rate, p50/p99/max latency and errors (any non-2xx or transport error).

    python bench/load_rate.py [--status-rate 100] [--submit-rate 5] [--seconds 60]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from api_load import BUNDLE, KEY, MODEL, free_port, percentile, start_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--status-rate", type=float, default=100.0)
    ap.add_argument("--submit-rate", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        server = start_server(home, port)
        try:
            table = run(f"http://127.0.0.1:{port}", args)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"\nopen loop, {args.seconds:g} s: status {args.status_rate:g}/s, submit {args.submit_rate:g}/s\n")
    print("| kind | requests | achieved /s | p50 ms | p99 ms | max ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for kind, row in table.items():
        print(
            f"| {kind} | {row['n']} | {row['rate']:.1f} | {row['p50']:.1f} | {row['p99']:.1f} | {row['max']:.1f} | {row['errors']} |"
        )


def run(url: str, args: argparse.Namespace) -> dict[str, dict]:
    headers = {"Authorization": f"Bearer {KEY}"}
    client = httpx.Client(base_url=url, headers=headers, timeout=30, limits=httpx.Limits(max_connections=64))
    ids = {}
    for name, kind in (("model", "checkpoint"), ("train", "dataset")):
        with open(BUNDLE / f"{name}.safetensors", "rb") as f:
            ids[name] = client.post(
                "/v1/artifacts", files={"file": (f"{name}.safetensors", f)}, data={"kind": kind}
            ).json()["id"]
    body = {
        "type": "remove",
        "model": {**MODEL, "checkpoint": ids["model"]},
        "train": ids["train"],
        "forget": {"class": 3},
    }
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    results: dict[str, list[tuple[float, bool]]] = {"status": [], "submit": []}
    lock = threading.Lock()

    def request(kind: str) -> None:
        started = time.perf_counter()
        try:
            if kind == "status":
                ok = client.get(f"/v1/jobs/{job_id}").status_code == 200
            else:
                ok = client.post("/v1/jobs", json=body).status_code == 202
        except httpx.HTTPError:
            ok = False
        with lock:
            results[kind].append(((time.perf_counter() - started) * 1000, ok))

    schedule = sorted(
        [(k / args.status_rate, "status") for k in range(int(args.seconds * args.status_rate))]
        + [(k / args.submit_rate, "submit") for k in range(int(args.seconds * args.submit_rate))]
    )
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=64) as pool:
        for at, kind in schedule:
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(request, kind)
    elapsed = time.perf_counter() - start
    client.close()
    table = {}
    for kind, rows in results.items():
        latencies = sorted(ms for ms, _ in rows)
        table[kind] = {
            "n": len(rows), "rate": len(rows) / elapsed, "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99), "max": latencies[-1], "errors": sum(1 for _, ok in rows if not ok),
        }  # fmt: skip
    return table


if __name__ == "__main__":
    main()
