"""Latency and throughput of the real server (``bentoml serve`` on 127.0.0.1) on a generated shop.

    python benchmarks/bench_service.py            # 10,000 customers, 2,000 sequential requests per endpoint
    python benchmarks/bench_service.py --quick    # 2,000 customers, 300 requests
    python benchmarks/bench_service.py --forgotten 100   # the same with 100 customers forgotten (tombstones)
    python benchmarks/bench_service.py --quick --flood 30000   # only: requests to random unknown paths

Per endpoint: sequential p50 / p99, throughput with 8 concurrent clients for a fixed time, all next
to the service's trivial ``/ping`` in the same run; a 1,000-customer ``/next_best_action_batch``;
single ``/next_best_action`` p50 / p99 while maximal batches run back to back (``/product_block_batch``
of customers x k = MAX_ITEMS), next to the idle figures of the same run; RSS of the server processes.
Writes benchmarks/results/service.json (service_quick.json; service_forgotten.json with --forgotten)
and prints a table.

``--flood N`` instead sends N requests to random paths the service does not serve (half with a
wrong API key, half with the right one: 401s and 404s) to a server with an API key, one after
another, and records the worker's RSS and the size of ``/metrics`` every 1,000 requests
(results/service_flood.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from features.demo import DemoShop, generate_demo
from features.io import load_data_dir, write_tombstones
from features.tombstones import Tombstones
from features.training_set import Target
from serving.schemas import MAX_ITEMS
from training.recommenders.train import train_recommender
from training.train import train_classifier

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
TARGETS = {"next_best_action_p50_ms": 3.0, "next_best_action_p99_ms": 8.0, "concurrent_vs_trivial": 0.70,
           "batch_1000_ms": 200.0}
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(server: subprocess.Popen, base: str, failure: str, limit_s: float = 600.0) -> float:
    """Poll ``/readyz`` until it answers 200; seconds it took. RuntimeError(failure) if the server exits first."""
    started = time.perf_counter()
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.perf_counter() - started > limit_s:
            raise RuntimeError(failure)
        time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def sequential(url: str, bodies: list[dict]) -> dict:
    times = []
    with httpx.Client(timeout=30) as client:
        for body in bodies[:20]:  # warm-up
            client.post(url, json=body)
        for body in bodies:
            start = time.perf_counter()
            response = client.post(url, json=body)
            times.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    return {"requests": len(times), "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(percentile(times, 99), 2)}


def concurrent(url: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    done, errors, stop = [0] * clients, [0] * clients, time.perf_counter() + seconds

    def worker(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(timeout=30) as client:
            while time.perf_counter() < stop:
                if client.post(url, json=rng.choice(bodies)).status_code == 200:
                    done[i] += 1
                else:
                    errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"clients": clients, "seconds": seconds, "requests_per_s": round(sum(done) / seconds, 1),
            "errors": sum(errors)}


def under_batch(base: str, bodies: list[dict], ids: list[str], k: int = 4) -> dict:
    """Single next-best-actions, one after another, while another client posts maximal product-block
    batches (customers x k = MAX_ITEMS, known customers first) back to back; until 3 batches ended."""
    batch_ids = (ids + [f"new-{i}" for i in range(MAX_ITEMS)])[:MAX_ITEMS // k]
    batch_times, single_times, stop = [], [], threading.Event()

    def batches() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                start = time.perf_counter()
                response = client.post(f"{base}/product_block_batch", json={"customer_ids": batch_ids, "k": k})
                response.raise_for_status()
                batch_times.append((time.perf_counter() - start) * 1000)
                if len(batch_times) >= 3:
                    stop.set()

    thread = threading.Thread(target=batches)
    thread.start()
    with httpx.Client(timeout=30) as client:
        i = 0
        while not stop.is_set():
            start = time.perf_counter()
            client.post(f"{base}/next_best_action", json=bodies[i % len(bodies)]).raise_for_status()
            single_times.append((time.perf_counter() - start) * 1000)
            i += 1
    thread.join()
    return {"batch": f"/product_block_batch, {len(batch_ids):,} customers x k={k}",
            "batch_ms": round(statistics.median(batch_times), 1), "batches": len(batch_times),
            "single_requests": len(single_times), "single_p50_ms": round(statistics.median(single_times), 2),
            "single_p99_ms": round(percentile(single_times, 99), 2), "single_max_ms": round(max(single_times), 1)}


def flood(base: str, server: subprocess.Popen, key: str, requests: int) -> dict:
    """Random unknown paths: worker RSS and /metrics size every 1,000 requests, and requests per second."""
    rng, samples, started = random.Random(0), [], time.perf_counter()

    def worker_rss() -> float:
        children = psutil.Process(server.pid).children(recursive=True)
        return round(max(p.memory_info().rss for p in children) / 2**20, 1)

    with httpx.Client(base_url=base, timeout=30, headers={"x-api-key": key}) as client:
        samples.append({"requests": 0, "worker_rss_mb": worker_rss(), "metrics_bytes": len(client.get("/metrics").content)})
        statuses: dict[int, int] = {}
        for i in range(1, requests + 1):
            path = "/" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=16))
            status = client.get(path, headers={"x-api-key": key if i % 2 else "wrong"}).status_code
            statuses[status] = statuses.get(status, 0) + 1
            if i % 1000 == 0:
                samples.append({"requests": i, "seconds": round(time.perf_counter() - started, 1),
                                "worker_rss_mb": worker_rss(), "metrics_bytes": len(client.get("/metrics").content)})
    return {"requests": requests, "statuses": statuses, "requests_per_s": round(requests / (time.perf_counter() - started)),
            "samples": samples}


def prepare(customers: int) -> tuple[Path, Path]:
    data = WORK / f"demo_{customers}"
    if not (data / "orders.parquet").exists():
        generate_demo(DemoShop(customers=customers, seed=0), data)
    mlruns = Path(tempfile.mkdtemp(prefix="sendwise-bench-serve-"))
    tables, _ = load_data_dir(data, None)
    for target in Target:
        train_classifier(tables, target, "2025-10-01", mlruns=mlruns)
    train_recommender(tables, "2025-10-01", "als", mlruns=mlruns)
    return data, mlruns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--forgotten", type=int, default=0,
                        help="tombstones for this many customers (the service checks every request against them)")
    parser.add_argument("--flood", type=int, default=0,
                        help="only send this many requests to random unknown paths (server with an API key)")
    args = parser.parse_args()
    customers, n, seconds = (2_000, 300, 5.0) if args.quick else (10_000, 2_000, 15.0)
    data, mlruns = prepare(customers)
    if args.forgotten:  # a copy of the shop with tombstones (their rows stay: only the check is measured)
        copy = mlruns / "data"
        shutil.copytree(data, copy)
        tables, _ = load_data_dir(copy, None)
        ids = [r[0] for r in tables.con.sql("SELECT DISTINCT customer_id FROM orders ORDER BY 1").fetchall()]
        write_tombstones(copy, Tombstones().adding(random.Random(1).sample(ids, args.forgotten)))
        data = copy
    port = free_port()
    env = os.environ | {"SENDWISE_DATA": str(data), "SENDWISE_MLRUNS": str(mlruns),
                        "SENDWISE_EXPOSURE_LOG": str(mlruns / "exposures.jsonl")}
    key = "bench-flood-key"
    if args.flood:
        env["SENDWISE_API_KEY"] = key
    server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:Sendwise", "--host",
                               "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        startup_s = wait_until_ready(server, base, "the server did not start")
        if args.flood:
            results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                       "when": datetime.now(UTC).isoformat(timespec="seconds"), "customers": customers,
                       "flood": flood(base, server, key, args.flood)}
            out = ROOT / "benchmarks" / "results" / "service_flood.json"
            out.write_text(json.dumps(results, indent=1))
            first, last = results["flood"]["samples"][0], results["flood"]["samples"][-1]
            console.print(f"{args.flood:,} requests to unknown paths ({results['flood']['statuses']}, "
                          f"{results['flood']['requests_per_s']}/s): worker RSS {first['worker_rss_mb']} -> "
                          f"{last['worker_rss_mb']} MB, /metrics {first['metrics_bytes']:,} -> {last['metrics_bytes']:,} "
                          f"bytes; written to {out.relative_to(ROOT)}")
            return
        tables, _ = load_data_dir(data, None)
        ids = [r[0] for r in tables.con.sql("SELECT DISTINCT customer_id FROM orders").fetchall()]
        rng = random.Random(0)
        bodies = [{"customer_id": rng.choice(ids)} for _ in range(n)]
        endpoints = {"ping": ([{}] * n), "next_best_action": bodies, "product_block": bodies, "score": bodies}
        results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                         "when": datetime.now(UTC).isoformat(timespec="seconds"), "customers": customers,
                         "startup_s": round(startup_s, 1), "targets": TARGETS, "forgotten": args.forgotten,
                         "endpoints": {}}
        for name, payload in endpoints.items():
            results["endpoints"][name] = {"sequential": sequential(f"{base}/{name}", payload),
                                          "concurrent_8": concurrent(f"{base}/{name}", payload, 8, seconds)}
        batch_times = []
        with httpx.Client(timeout=60) as client:
            for _ in range(11):
                body = {"customer_ids": rng.sample(ids, 1_000)}
                start = time.perf_counter()
                client.post(f"{base}/next_best_action_batch", json=body).raise_for_status()
                batch_times.append((time.perf_counter() - start) * 1000)
        results["next_best_action_batch_1000_ms"] = round(statistics.median(batch_times[1:]), 1)
        results["under_maximal_batch"] = under_batch(base, bodies, ids)
        procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        results["rss_mb"] = {f"{p.pid}": round(p.memory_info().rss / 2**20) for p in procs}
    finally:
        server.terminate()
        server.wait(timeout=60)
    ping = results["endpoints"]["ping"]["concurrent_8"]["requests_per_s"]
    title = f"Service on 127.0.0.1, {customers:,} customers" + (f", {args.forgotten} forgotten" if args.forgotten else "")
    table = Table(title=f"{title}, 2 cores", title_justify="left")
    for col in ("endpoint", "p50 ms", "p99 ms", "req/s at 8 clients", "vs /ping"):
        table.add_column(col, justify="left" if col == "endpoint" else "right")
    for name, r in results["endpoints"].items():
        rate = r["concurrent_8"]["requests_per_s"]
        table.add_row(f"/{name}", f"{r['sequential']['p50_ms']}", f"{r['sequential']['p99_ms']}", f"{rate}",
                      f"{rate / ping:.0%}")
    console.print(table)
    console.print(f"/next_best_action_batch of 1,000: {results['next_best_action_batch_1000_ms']} ms (median of 10); "
                  f"RSS MB per process: {results['rss_mb']}; startup {results['startup_s']} s")
    busy, idle = results["under_maximal_batch"], results["endpoints"]["next_best_action"]["sequential"]
    console.print(f"/next_best_action while {busy['batch']} runs ({busy['batch_ms']} ms each, {busy['batches']} "
                  f"back to back): p50 {busy['single_p50_ms']} ms, p99 {busy['single_p99_ms']} ms, max "
                  f"{busy['single_max_ms']} ms over {busy['single_requests']} requests; idle: p50 {idle['p50_ms']} ms, "
                  f"p99 {idle['p99_ms']} ms")
    name = "service_quick" if args.quick else "service"
    out = ROOT / "benchmarks" / "results" / (f"{name}_forgotten.json" if args.forgotten else f"{name}.json")
    out.write_text(json.dumps(results, indent=1))
    console.print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
