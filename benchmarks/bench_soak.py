"""Sustained load on the real server (``bentoml serve`` on 127.0.0.1): a fixed request rate for a
fixed time, a mix of endpoints plus malformed and oversized requests, and a ``privacy forget`` run
halfway through.

    python benchmarks/bench_soak.py                          # 10 minutes at 100 requests/s, 10,000 customers
    python benchmarks/bench_soak.py --duration 60 --quick    # 1 minute, 2,000 customers
    python benchmarks/bench_soak.py --duration 120 --mix single   # only single next-best-actions (and malformed)

The load is open-loop: request i is due at ``start + i / rate`` whatever happened before, and its
latency counts from that moment (a stalled server cannot hide behind a waiting client); the time
from sending to the answer is reported next to it. Per window: requests, errors (a normal request not answered 200, a malformed one not answered 4xx, or no answer),
p50 / p99 / max latency and the server's RSS. At the end, every ``/next_best_action`` the server
answered must have its exposure record, the forgotten customers must be answered as unknown, and
the API key must appear in no log. Writes benchmarks/results/soak.json (soak_quick.json) and prints
a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
from bench_service import free_port, percentile, prepare, wait_until_ready  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from features.io import load_data_dir  # noqa: E402
from serving.exposures import read_exposures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "soak-" + os.urandom(8).hex()
MIXES = {
    "full": (("next_best_action", 0.45), ("product_block", 0.15), ("score", 0.15), ("recommend_rules", 0.05),
             ("next_best_action_batch_100", 0.05), ("score_unknown", 0.05), ("malformed", 0.10)),
    # without the requests that take 15-20 ms each (batches of 100, rules on the dynamic path)
    "single": (("next_best_action", 0.90), ("malformed", 0.10)),
}
MAX_IN_FLIGHT = 64
console = Console()


@dataclass
class Outcome:
    due: float  # seconds since the start
    kind: str
    latency_ms: float  # from the moment it was due: includes any wait in the client
    service_ms: float  # from the moment it was sent
    status: int  # 0: no answer
    ok: bool


async def streamed_body():
    """3.2 MB in chunks, sent without a content-length."""
    for _ in range(80):
        yield b'"x",' * 10_000


def malformed_request(rng: random.Random) -> tuple[str, str, dict]:
    """(method, path, aiohttp arguments) of a request the service must refuse with a 4xx."""
    kind = rng.randrange(9)
    json_header = {"content-type": "application/json"}
    if kind == 0:
        return "POST", "/score", {"data": rng.randbytes(rng.randrange(1, 300)), "headers": json_header}
    if kind == 1:
        return "POST", "/next_best_action", {"json": {"customer_id": rng.randrange(10**6)}}
    if kind == 2:
        return "POST", "/recommend", {"json": {"customer_id": "C1", "k": rng.choice([0, 101, 10**9, -1])}}
    if kind == 3:
        return "POST", "/score_batch", {"json": {"customer_ids": "C1"}}
    if kind == 4:  # oversized, announced
        return "POST", "/score_batch", {"data": b" " * 2_500_000, "headers": json_header}
    if kind == 5:  # oversized, streamed without a length
        return "POST", "/score_batch", {"data": streamed_body(), "headers": json_header}
    if kind == 6:
        depth = 20_000
        return "POST", "/score", {"data": b'{"customer_id": ' + b"[" * depth + b"]" * depth + b"}",
                                  "headers": json_header}
    if kind == 7:
        return "POST", "/score", {"json": {"customer_id": "C1"}, "headers": {"x-api-key": "wrong"}}
    return "GET", "/score", {}


def normal_request(kind: str, rng: random.Random, ids: list[str]) -> tuple[str, str, dict]:
    one = {"customer_id": rng.choice(ids)}
    return {"next_best_action": ("POST", "/next_best_action", {"json": one}),
            "product_block": ("POST", "/product_block", {"json": one | {"k": 4}}),
            "score": ("POST", "/score", {"json": one}),
            "recommend_rules": ("POST", "/recommend", {"json": one | {"k": 5, "rules": {"max_per_category": 2}}}),
            "next_best_action_batch_100": ("POST", "/next_best_action_batch",
                                           {"json": {"customer_ids": rng.sample(ids, 100)}}),
            "score_unknown": ("POST", "/score", {"json": {"customer_id": f"new-{rng.randrange(10**9)}"}}),
            }[kind]


def machine_sample(pid: int) -> dict[str, float]:
    """RSS in MB of the supervisor and of its largest child (the worker); CPU seconds used so far by
    the worker and by this client; the machine's 1-minute load average (the machine is shared)."""
    parent = psutil.Process(pid)
    worker = max(parent.children(recursive=True), key=lambda p: p.memory_info().rss)
    worker_cpu, client_cpu = worker.cpu_times(), psutil.Process().cpu_times()
    return {"supervisor_mb": round(parent.memory_info().rss / 2**20, 1),
            "worker_mb": round(worker.memory_info().rss / 2**20, 1),
            "worker_cpu_s": worker_cpu.user + worker_cpu.system, "client_cpu_s": client_cpu.user + client_cpu.system,
            "load_1m": os.getloadavg()[0]}


async def run_load(base: str, ids: list[str], mix: tuple, rate: float, duration: float, window: float,
                   server_pid: int, forget: dict) -> tuple[list[Outcome], list[str], list[dict]]:
    """Send the load; returns every outcome, the request ids of the answered next-best-actions and
    machine samples (see :func:`machine_sample`) every ``window`` seconds."""
    rng = random.Random(0)
    kinds, weights = zip(*mix, strict=True)
    outcomes: list[Outcome] = []
    acked: list[str] = []
    rss: list[dict] = [{"t": 0.0, **machine_sample(server_pid)}]
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=30)

    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout,
                                     headers={"x-api-key": API_KEY}) as http:

        async def send(due: float, kind: str, method: str, path: str, kwargs: dict) -> None:
            async with gate:
                status, body, sent = 0, None, time.perf_counter()
                try:
                    async with http.request(method, path, **kwargs) as response:
                        status = response.status
                        payload = await response.read()
                    if kind == "next_best_action" and status == 200:
                        body = json.loads(payload)
                except (aiohttp.ClientError, TimeoutError):
                    pass
                now = time.perf_counter()
            ok = 400 <= status < 500 if kind == "malformed" else status == 200
            outcomes.append(Outcome(due, kind, (now - start - due) * 1000, (now - sent) * 1000, status, ok))
            if body is not None:
                acked.append(body["request_id"])

        async def sample_machine() -> None:
            while True:
                await asyncio.sleep(window)
                rss.append({"t": round(time.perf_counter() - start, 1), **machine_sample(server_pid)})

        async def forget_halfway() -> None:
            if not forget["at"]:
                return
            await asyncio.sleep(duration * forget["at"])
            began = time.perf_counter()
            done = await asyncio.create_subprocess_exec(*forget["command"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.PIPE)
            _, err = await done.communicate()
            forget["returncode"], forget["stderr_tail"] = done.returncode, err.decode()[-500:]
            forget["started_s"] = round(began - start, 1)
            forget["took_s"] = round(time.perf_counter() - began, 2)
            answers = []
            for c in forget["ids"]:
                async with http.post("/score", json={"customer_id": c}) as response:
                    answers.append((await response.json())["known"])
            forget["answered_unknown_after"] = not any(answers)

        start = time.perf_counter()
        tasks, sampler = [], asyncio.create_task(sample_machine())
        forgetting = asyncio.create_task(forget_halfway())
        total = int(rate * duration)
        for i in range(total):
            due = i / rate
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = rng.choices(kinds, weights)[0]
            method, path, kwargs = (malformed_request(rng) if kind == "malformed" else normal_request(kind, rng, ids))
            tasks.append(asyncio.create_task(send(due, kind, method, path, kwargs)))
        await asyncio.gather(*tasks)
        await forgetting
        sampler.cancel()
        rss.append({"t": round(time.perf_counter() - start, 1), **machine_sample(server_pid)})
    return outcomes, acked, rss


def windows(outcomes: list[Outcome], window: float, samples: list[dict]) -> list[dict]:
    """One row per window of due times: latency of the normal requests, errors, and the machine
    sample at the window's end (CPU as a share of one core over the window)."""
    rows = []
    last = max(o.due for o in outcomes)
    for w in range(int(last // window) + 1):
        inside = [o for o in outcomes if w * window <= o.due < (w + 1) * window]
        served = [o.latency_ms for o in inside if o.kind != "malformed"]
        service = [o.service_ms for o in inside if o.kind != "malformed"]
        end = min(samples, key=lambda r: abs(r["t"] - (w + 1) * window))
        begin = min(samples, key=lambda r: abs(r["t"] - w * window))
        span = max(end["t"] - begin["t"], 1e-9)
        rows.append({"from_s": w * window, "requests": len(inside), "errors": sum(not o.ok for o in inside),
                     "p50_ms": round(statistics.median(served), 2), "p99_ms": round(percentile(served, 99), 2),
                     "max_ms": round(max(served), 1), "service_p99_ms": round(percentile(service, 99), 2),
                     "worker_rss_mb": end["worker_mb"],
                     "worker_cpu": round((end["worker_cpu_s"] - begin["worker_cpu_s"]) / span, 2),
                     "client_cpu": round((end["client_cpu_s"] - begin["client_cpu_s"]) / span, 2),
                     "load_1m": round(end["load_1m"], 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per row of the table")
    parser.add_argument("--forget-at", type=float, default=0.5,
                        help="run `sendwise privacy forget` on 5 customers at this share of the run (0: never)")
    parser.add_argument("--mix", choices=sorted(MIXES), default="full",
                        help="full: every kind of request; single: single next-best-actions and malformed ones")
    parser.add_argument("--quick", action="store_true", help="2,000 customers; results to soak_quick.json")
    args = parser.parse_args()
    customers = 2_000 if args.quick else 10_000
    cached, mlruns = prepare(customers)
    work = Path(tempfile.mkdtemp(prefix="sendwise-soak-"))
    data = work / "data"
    shutil.copytree(cached, data)  # forget rewrites the data: keep the cached shop intact
    log = work / "exposures.jsonl"
    tables, _ = load_data_dir(data, work / "rejects")
    ids = [r[0] for r in tables.con.sql("SELECT DISTINCT customer_id FROM orders ORDER BY 1").fetchall()]
    forgotten = random.Random(1).sample(ids, 5)
    forget = {"at": args.forget_at, "ids": forgotten,
              "command": [sys.executable, "-m", "sendwise.cli", "privacy", "forget", *forgotten, "--data", str(data),
                          "--mlruns", str(mlruns), "--exposure-log", str(log)]}
    port = free_port()
    env = os.environ | {"SENDWISE_DATA": str(data), "SENDWISE_MLRUNS": str(mlruns), "SENDWISE_EXPOSURE_LOG": str(log),
                        "SENDWISE_API_KEY": API_KEY}
    server_log = work / "server.log"
    with open(server_log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:Sendwise", "--host",
                                   "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, base, f"the server did not start; see {server_log}")
        with httpx.Client(base_url=base, timeout=30, headers={"x-api-key": API_KEY}) as http:
            for c in ids[:200]:  # warm-up
                http.post("/next_best_action", json={"customer_id": c}).raise_for_status()
        outcomes, acked, rss = asyncio.run(run_load(base, ids, MIXES[args.mix], args.rate, args.duration,
                                                    args.window, server.pid, forget))
    finally:
        server.terminate()
        server.wait(timeout=60)
    logged = {r["request_id"] for r in read_exposures(log)}
    leaked = API_KEY.encode() in server_log.read_bytes() or API_KEY.encode() in log.read_bytes()
    rows = windows(outcomes, args.window, rss)
    served = [o.latency_ms for o in outcomes if o.kind != "malformed"]
    malformed = [o for o in outcomes if o.kind == "malformed"]
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "customers": customers,
        "duration_s": args.duration, "rate_per_s": args.rate, "mix": dict(MIXES[args.mix]),
        "achieved_rate_per_s": round(len(outcomes) / args.duration, 1),
        "requests": len(outcomes), "errors": sum(not o.ok for o in outcomes),
        "errors_by_kind": {k: sum(1 for o in outcomes if o.kind == k and not o.ok) for k, _ in MIXES[args.mix]},
        "malformed": {"sent": len(malformed), "answered_4xx": sum(o.ok for o in malformed),
                      "answered_5xx": sum(o.status >= 500 for o in malformed)},
        "p50_ms": round(statistics.median(served), 2), "p99_ms": round(percentile(served, 99), 2),
        "by_kind": {k: {"requests": len(lat), "p50_ms": round(statistics.median(lat), 2),
                        "p99_ms": round(percentile(lat, 99), 2)}
                    for k, _ in MIXES[args.mix] if (lat := [o.latency_ms for o in outcomes if o.kind == k])},
        "rss_mb": {"start": {k: rss[0][k] for k in ("supervisor_mb", "worker_mb")},
                   "end": {k: rss[-1][k] for k in ("supervisor_mb", "worker_mb")}}, "windows": rows,
        "exposures": {"acknowledged": len(acked), "missing_from_log": len(set(acked) - logged)},
        "forget": {k: v for k, v in forget.items() if k != "command"}, "api_key_in_logs": leaked,
    }
    table = Table(title=f"Soak ({args.mix} mix): {args.rate:g} req/s for {args.duration:g} s, {customers:,} customers",
                  title_justify="left")
    for col in ("from s", "requests", "errors", "p50 ms", "p99 ms", "max ms", "p99 ms from send", "worker RSS MB",
                "worker CPU", "client CPU", "load 1m"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['from_s']:g}", f"{r['requests']:,}", f"{r['errors']}", f"{r['p50_ms']}", f"{r['p99_ms']}",
                      f"{r['max_ms']}", f"{r['service_p99_ms']}", f"{r['worker_rss_mb']}", f"{r['worker_cpu']:.0%}", f"{r['client_cpu']:.0%}",
                      f"{r['load_1m']}")
    console.print(table)
    console.print(f"{results['requests']:,} requests ({results['achieved_rate_per_s']}/s), {results['errors']} errors; "
                  f"malformed: {results['malformed']}; p50 {results['p50_ms']} ms, p99 {results['p99_ms']} ms; "
                  f"RSS start {results['rss_mb']['start']} end {results['rss_mb']['end']}; exposures {results['exposures']}; forget at "
                  f"{forget.get('started_s')} s took {forget.get('took_s')} s (exit {forget.get('returncode')}), "
                  f"forgotten answered unknown after: {forget.get('answered_unknown_after')}; "
                  f"API key in logs: {leaked}")
    name = "soak" + ("" if args.mix == "full" else f"_{args.mix}") + ("_quick" if args.quick else "")
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps(results, indent=1))
    console.print(f"written to {out.relative_to(ROOT)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
