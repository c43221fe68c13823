"""Throughput of the Redis Streams consumer into a real event log, fsync on.

    python benchmarks/bench_stream.py                  # 50,000 events, batches of 100 and 500, 3 runs each
    python benchmarks/bench_stream.py --events 5000 --batches 500 --runs 1   # a quick look (~10 s)

Starts its own ``redis-server`` (127.0.0.1, a free port, nothing saved), publishes N events with
``XADD`` in pipelines of 1,000 (untimed: the shop's side), then times one
:class:`serving.stream.StreamConsumer` delivering all of them (read, validate, ``EventLog.append``
with fsync, ``XACK``) from the group's creation to the last acknowledgement, on the same machine as
the server. Each run starts from an empty server and an empty log. Reported per batch size: events/s
(median of the runs), the share of the time spent in ``ingest`` (the append and its fsync), and the
CPU seconds of the consumer and of redis-server per 1,000 events. The log is then checked: every
event once, nothing pending. Writes benchmarks/results/stream.json; exits 1 if the median at the
default batch (500) misses the issue's target of 5,000 events/s.
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
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import redis
from rich.console import Console
from rich.table import Table

from features.event_log import Event, EventLog
from serving.stream import StreamConsumer

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"  # git-ignored
STREAM, GROUP = "shop-events", "sendwise"
TARGET_EVENTS_PER_S, TARGET_BATCH = 5_000, 500
console = Console(width=110)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, redis.Redis]:
    server_bin = shutil.which("redis-server")
    if server_bin is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    server = subprocess.Popen([server_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client, deadline = redis.Redis(host="127.0.0.1", port=port), time.monotonic() + 10
    while True:
        try:
            client.ping()
            return server, client
        except redis.ConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                sys.exit(f"redis-server did not start on port {port}")
            time.sleep(0.05)


def events(n: int, seed: int = 0) -> list[bytes]:
    """A shop's day: 10,000 customers, 2,000 products; 60 % views, 30 % add-to-carts, 10 % orders of 1-3 lines."""
    rng, start = random.Random(seed), datetime(2026, 11, 30, tzinfo=UTC)
    out = []
    for i in range(n):
        body: dict = {"event_id": f"evt-{seed}-{i:08d}", "customer_id": f"cust-{rng.randrange(10_000):05d}",
                      "occurred_at": (start + timedelta(seconds=i * 86_400 / n)).isoformat()}
        kind = rng.random()
        if kind < 0.1:
            body |= {"event_type": "order", "lines": [
                {"product_id": f"prod-{rng.randrange(2_000):04d}", "quantity": rng.randint(1, 3),
                 "unit_price": round(rng.uniform(2, 80), 2)} for _ in range(rng.randint(1, 3))]}
        else:
            body |= {"event_type": "product_view" if kind < 0.7 else "add_to_cart",
                     "product_id": f"prod-{rng.randrange(2_000):04d}"}
        out.append(json.dumps(body).encode())
    return out


def publish(client: redis.Redis, payloads: list[bytes], chunk: int = 1_000) -> float:
    started = time.perf_counter()
    for i in range(0, len(payloads), chunk):
        with client.pipeline(transaction=False) as pipe:
            for payload in payloads[i:i + chunk]:
                pipe.xadd(STREAM, {"event": payload})
            pipe.execute()
    return time.perf_counter() - started


def one_run(client: redis.Redis, server: psutil.Process, payloads: list[bytes], batch: int, work: Path) -> dict:
    client.flushall()
    publish_s = publish(client, payloads)
    log_path = work / f"events-{batch}-{time.monotonic_ns()}.jsonl"
    log = EventLog(log_path, fsync=True)
    ingest_s, applied = 0.0, 0

    def ingest(batch_events: list[Event]) -> None:
        nonlocal ingest_s, applied
        started = time.perf_counter()
        applied += len(log.append(batch_events).new)
        ingest_s += time.perf_counter() - started

    me, server_cpu = psutil.Process(), sum(server.cpu_times()[:2])
    my_cpu = sum(me.cpu_times()[:2])
    started = time.perf_counter()
    consumer = StreamConsumer(client, STREAM, GROUP, "bench", ingest, batch=batch, block_ms=0)
    delivered = 0
    while delivered < len(payloads):
        delivered += consumer.run_once()
    seconds = time.perf_counter() - started
    my_cpu, server_cpu = sum(me.cpu_times()[:2]) - my_cpu, sum(server.cpu_times()[:2]) - server_cpu
    pending = client.xpending(STREAM, GROUP)["pending"]
    if applied != len(payloads) or pending or delivered != len(payloads):
        sys.exit(f"batch {batch}: {applied} applied, {delivered} acknowledged, {pending} pending of {len(payloads)}")
    log_path.unlink()
    per_k = 1_000 / len(payloads)
    return {"seconds": round(seconds, 3), "events_per_s": round(len(payloads) / seconds),
            "ingest_share": round(ingest_s / seconds, 3), "publish_events_per_s": round(len(payloads) / publish_s),
            "consumer_cpu_s_per_1000": round(my_cpu * per_k, 4), "redis_cpu_s_per_1000": round(server_cpu * per_k, 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[100, TARGET_BATCH])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    payloads = events(args.events)
    server, client = start_redis()
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "redis_server": client.info("server")["redis_version"],
                                 "redis_py": redis.__version__, "platform": platform.platform(),
                                 "load_average_before": [round(x, 2) for x in os.getloadavg()],
                                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT,
                                                          capture_output=True, text=True).stdout.strip()},
                     "when": datetime.now(UTC).isoformat(timespec="seconds"), "events": args.events,
                     "fsync": True, "target_events_per_s": TARGET_EVENTS_PER_S, "target_batch": TARGET_BATCH,
                     "batches": {}}
    try:
        WORK.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="stream-", dir=WORK) as work:
            for batch in args.batches:
                runs = [one_run(client, psutil.Process(server.pid), payloads, batch, Path(work))
                        for _ in range(args.runs)]
                results["batches"][str(batch)] = {
                    "runs": runs, "median_events_per_s": statistics.median(r["events_per_s"] for r in runs)}
    finally:
        client.close()
        server.kill()
        server.wait()
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    table = Table(title=f"Redis stream -> event log (fsync), {args.events:,} events, {os.cpu_count()} cores, "
                        f"median of {args.runs}",
                  title_justify="left")
    for col in ("batch", "events/s", "min-max", "in ingest", "consumer CPU s/1k", "redis CPU s/1k"):
        table.add_column(col, justify="right", no_wrap=True)
    for batch, r in results["batches"].items():
        rates = sorted(x["events_per_s"] for x in r["runs"])
        mid = next(x for x in r["runs"] if x["events_per_s"] == rates[len(rates) // 2])
        table.add_row(batch, f"{r['median_events_per_s']:,}", f"{rates[0]:,}-{rates[-1]:,}",
                      f"{mid['ingest_share']:.0%}", f"{mid['consumer_cpu_s_per_1000']}", f"{mid['redis_cpu_s_per_1000']}")
    console.print(table)
    default = results["batches"].get(str(TARGET_BATCH))
    results["target_met"] = default is not None and default["median_events_per_s"] >= TARGET_EVENTS_PER_S
    out = ROOT / "benchmarks" / "results" / "stream.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    console.print(f"target {TARGET_EVENTS_PER_S:,} events/s at batch {TARGET_BATCH}: "
                  f"{'met' if results['target_met'] else 'MISSED'}; written to {out.relative_to(ROOT)}")
    if not results["target_met"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
