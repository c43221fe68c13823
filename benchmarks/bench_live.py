"""Live profiles against the real server (``bentoml serve`` on 127.0.0.1): issue 16's figures.

    python benchmarks/bench_live.py            # 10,000 customers (~15 min), writes results/live.json
    python benchmarks/bench_live.py --quick    # 2,000 customers (~3 min), writes results/live_quick.json
    python benchmarks/bench_live.py --workers 2 [--quick]   # 2 workers on Redis, results/live_workers[_quick].json
    python benchmarks/bench_live.py --scale 100000,300000   # time to ready only, writes results/live_scale.json

One server (event log in a fresh work dir, ``SENDWISE_RELOAD_SECONDS=0``, clock ``auto``: the data clock
for the generated shop) serves, one phase after the other (2 shared cores: nothing heavy overlaps):

- **Freshness**: customers whose answer is neither ``suppress`` nor ``cart_recovery`` get one
  ``add_to_cart`` each (``POST /events``, one event, at the service's clock from ``/model_info``);
  right after its 2xx the client asks ``/next_best_action`` (again until ``cart_recovery``, at most 2 s):
  the time from the 2xx to that answer, and the share answered ``cart_recovery`` on the first try.
  Baseline in the same run: the same customers' ``/next_best_action`` before their event.
- **Send-time latency under ingestion**: single ``/next_best_action`` one after another on one keep-alive
  connection, half for customers that the ingestion touches, half for customers it never touches. Three
  kinds of window: idle; busy, while a feeder posts 100-event batches every 0.1 s (open loop: 1,000
  events/s); control, the same feed of batches the service acknowledged just before the window (the same
  requests, received, validated and answered; nothing applied, nothing logged, nothing computed fresh).
  Six rounds of 5 s windows (``--quick``: three of 2 s), the order rotated each round so that every kind
  comes first, second and third alike (a shared machine's speed drifts over minutes; a fixed order would
  favour whichever kind comes first). The feeder is a process of its own (``multiprocessing``, spawn: it
  shares no GIL with the measuring client), its bodies encoded before the window; it sends the 2xx time
  of each batch back through a queue that the measuring loop drains, without waiting, between requests.
  Before an idle or control window each touched customer is answered once (they then read cached
  answers). p50 / p99 per window, medians over the windows, also for the untouched half alone; the share
  of busy requests for a customer with an event acknowledged since their previous answer (computed fresh
  by the service, not a cached answer) and their p50 / p99.
- **Ingestion**: first, cold, one event for each customer of the pool (each one's first event since the
  start: the service reads that customer's rows then), batches of 500; then events/s acknowledged through
  ``/events`` batches of 500 and 100, from 1 and 2 concurrent clients, for a fixed time each, median of 3
  runs. Bodies are encoded before the clock starts. Events: product_view 55 %, email_open 20 %,
  add_to_cart 15 %, order of 1-3 lines 10 %, over most of the shop's customers; every event_id unique.
- **Restart**: a client posts 100-event batches (each with one ``add_to_cart`` for a customer kept for
  this check) until N are acknowledged, then the whole server process group gets SIGKILL while it still
  posts. The server starts again on the same log: time to ready, then every acknowledged event_id must
  be in the log and every checked customer with an acknowledged ``add_to_cart`` must get
  ``cart_recovery`` (so must the freshness phase's customers).

``--workers N`` (N >= 2): this script starts a redis-server (``/usr/bin/redis-server`` on 127.0.0.1, a free
port, ``appendonly yes``, ``appendfsync always``, in the work dir, nothing else saved; stopped at the end)
and the server with ``SENDWISE_WORKERS=N`` and ``SENDWISE_ONLINE_STORE`` on it (the event log a Redis
stream every worker follows). A keep-alive connection stays with one worker (``/model_info`` names it):
freshness posts customer i's ``add_to_cart`` to worker i mod N and asks worker i+1 mod N; the latency
windows measure one worker while the feeder posts to another; ingestion client c posts to worker c mod N.
No restart phase (the JSON says so).

``--scale N,...``: the time to ready of a server on a generated shop of N customers (models trained once
on the 10,000-customer shop, as bench_models.py does), with an empty event log and with a log of
``--scale-events`` events (written beforehand with ``EventLog``, untimed), and the server's peak RSS.
A start past ``--scale-limit`` seconds, or above 60 % of the machine's memory, is stopped and recorded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
import psutil
import redis
from bench_service import WORK, free_port, percentile, prepare, wait_until_ready
from rich.console import Console
from rich.table import Table

from features.demo import DemoShop, generate_demo
from features.event_log import EventLog, parse_events
from features.io import load_data_dir

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event as EventType

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"freshness_p99_ms": 50.0, "freshness_first_try_share": 1.0, "ingestion_events_per_s": 5_000,
           "busy_vs_idle_max_ratio": 1.10}
REDIS_SERVER = "/usr/bin/redis-server"
JSON_HEADERS = {"content-type": "application/json"}
console = Console(width=130)


# -- the server --------------------------------------------------------------------------------------------
class Server:
    """``bentoml serve`` and its worker; killed process by process."""

    def __init__(self, data: Path, mlruns: Path, log: Path, work: Path, workers: int = 1,
                 online_store: str | None = None) -> None:
        self.env = os.environ | {"SENDWISE_DATA": str(data), "SENDWISE_MLRUNS": str(mlruns),
                                 "SENDWISE_EXPOSURE_LOG": str(work / "exposures.jsonl"),
                                 "SENDWISE_RELOAD_SECONDS": "0", "SENDWISE_CLOCK": "auto"}
        self.env |= ({"SENDWISE_WORKERS": str(workers), "SENDWISE_ONLINE_STORE": online_store} if online_store
                     else {"SENDWISE_EVENT_LOG": str(log)})
        self.work = work
        self.process: subprocess.Popen | None = None
        self.base = ""

    def start(self, limit_s: float = 900.0, max_rss_mb: float | None = None) -> dict:
        """Start and wait for ``/readyz``: seconds to ready and the peak RSS of the process tree (MB)."""
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        stderr = (self.work / f"server-{port}.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:Sendwise",
                                         "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=stderr)
        peak, stop, over = [0.0], threading.Event(), [False]

        def sample() -> None:
            while not stop.is_set():
                rss = self.rss_mb()
                peak[0] = max(peak[0], rss)
                if max_rss_mb is not None and rss > max_rss_mb:
                    over[0] = True
                    self.kill(signal.SIGKILL)
                    return
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            ready_s = wait_until_ready(self.process, self.base, "the server exited or did not get ready", limit_s)
        except RuntimeError:
            code = self.process.poll()
            self.kill(signal.SIGKILL)
            reason = (f"above {max_rss_mb:,.0f} MB RSS" if over[0] else f"exited with code {code}"
                      if code is not None else f"not ready after {limit_s:.0f} s")
            return {"ready": False, "reason": reason, "peak_rss_mb": round(peak[0])}
        finally:
            stop.set()
            sampler.join()
        return {"ready": True, "ready_s": round(ready_s, 1), "peak_rss_mb": round(peak[0])}

    def rss_mb(self) -> float:
        try:
            return sum(p.memory_info().rss for p in self.tree()) / 2**20
        except psutil.Error:
            return 0.0

    def tree(self) -> list[psutil.Process]:
        """The server's processes (BentoML's worker runs in a session of its own: not in the group)."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def kill(self, sig: int) -> None:
        """Send ``sig`` to each process of the server (the processes this script started), by pid."""
        if self.process is None:
            return
        processes = self.tree()
        for p in processes:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(processes, timeout=60)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        processes = self.tree()
        self.process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=60)
        for p in alive:
            p.kill()


class RedisServer:
    """Debian's redis-server on a free port of 127.0.0.1, its append-only file fsync'd on every write in
    ``work`` (as the Redis event log requires), nothing else saved."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "yes", "--appendfsync", "always", "--dir", str(work)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe, deadline = redis.Redis(host="127.0.0.1", port=self.port), time.monotonic() + 10
        try:
            while True:
                try:
                    self.version = probe.info("server")["redis_version"]
                    return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"{REDIS_SERVER} did not answer on port {self.port} within 10 s "
                                           f"(exit code {self.process.poll()})") from None
                    time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class ServiceClock:
    """The service's ``now`` (``/model_info``) followed on this side with a monotonic clock."""

    def __init__(self, base: str) -> None:
        info = httpx.get(f"{base}/model_info", timeout=30).json()
        self.mode = info["clock"]
        self.at = datetime.fromisoformat(info["now"]).replace(tzinfo=None)
        self.started = time.monotonic()

    def now(self) -> datetime:
        return self.at + timedelta(seconds=time.monotonic() - self.started)


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds") + "Z"


# -- events ------------------------------------------------------------------------------------------------
class Events:
    """Realistic events with unique ids over a pool of customers."""

    def __init__(self, prefix: str, customers: list[str], products: list[str], seed: int) -> None:
        self.prefix, self.customers, self.products = prefix, customers, products
        self.rng, self.n = random.Random(seed), 0

    def one(self, moment: datetime) -> dict:
        rng, self.n = self.rng, self.n + 1
        event = {"event_id": f"{self.prefix}-{self.n:09d}", "customer_id": rng.choice(self.customers),
                 "occurred_at": stamp(moment - timedelta(seconds=rng.uniform(1, 30)))}
        kind = rng.random()
        if kind < 0.10:
            event |= {"event_type": "order", "lines": [
                {"product_id": p, "quantity": rng.randint(1, 3), "unit_price": round(rng.uniform(2, 80), 2)}
                for p in rng.sample(self.products, rng.randint(1, 3))]}
        else:
            event |= {"event_type": "add_to_cart" if kind < 0.25 else "email_open" if kind < 0.45 else "product_view"}
            if event["event_type"] != "email_open":
                event["product_id"] = rng.choice(self.products)
        return event

    def bodies(self, count: int, size: int, moment: datetime) -> list[bytes]:
        return [json.dumps({"events": [self.one(moment) for _ in range(size)]}).encode() for _ in range(count)]


def post_events(client: httpx.Client, body: bytes, expected: int) -> None:
    response = client.post("/events", content=body, headers=JSON_HEADERS)
    if response.status_code != 200:
        raise RuntimeError(f"POST /events answered {response.status_code}: {response.text[:300]}")
    accepted = response.json()["accepted"]
    if accepted != expected:
        raise RuntimeError(f"POST /events accepted {accepted} of {expected} new events")


def nba(client: httpx.Client, customer_id: str) -> str:
    response = client.post("/next_best_action", json={"customer_id": customer_id})
    response.raise_for_status()
    return response.json()["action"]


def actions(base: str, ids: list[str]) -> dict[str, str]:
    """Each customer's action now (``/next_best_action_batch`` in chunks of 1,000)."""
    out = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        for i in range(0, len(ids), 1_000):
            response = client.post("/next_best_action_batch", json={"customer_ids": ids[i:i + 1_000]})
            response.raise_for_status()
            out |= {r["customer_id"]: r["action"] for r in response.json()["results"]}
    return out


# -- connections (a keep-alive connection stays with one worker) -----------------------------------------
def connect(base: str, worker: int | None = None, avoid: int | None = None) -> tuple[httpx.Client, int]:
    """A keep-alive connection (it stays with the worker that accepted it) and that worker's pid: to
    ``worker`` when given, to another than ``avoid`` when given, else to any; 200 tries at most."""
    for _ in range(200):
        client = httpx.Client(base_url=base, timeout=30)
        pid = client.get("/model_info").json()["worker"]
        if (worker is None or pid == worker) and (avoid is None or pid != avoid):
            return client, pid
        client.close()
    wanted = f"worker {worker}" if worker is not None else f"a worker other than {avoid}"
    raise RuntimeError(f"200 new connections to {base} never reached {wanted}")


def connect_each(base: str, workers: int) -> dict[int, httpx.Client]:
    """One keep-alive connection per worker, by pid."""
    found: dict[int, httpx.Client] = {}
    for _ in range(200):
        client, pid = connect(base)
        if pid in found:
            client.close()
        else:
            found[pid] = client
        if len(found) == workers:
            return found
    raise RuntimeError(f"only {len(found)} of {workers} workers ({sorted(found)}) answered 200 new connections")


def worker_of(client: httpx.Client) -> int:
    return client.get("/model_info").json()["worker"]


# -- phases ------------------------------------------------------------------------------------------------
def freshness(base: str, clock: ServiceClock, customers: list[str], products: list[str], workers: int) -> dict:
    """add_to_cart, then next_best_action until cart_recovery: ms from the 2xx to that answer; with several
    workers the event goes to one worker and the questions to the next one (connections kept per worker)."""
    rng = random.Random(1)
    before, after, first_try, tries = [], [], 0, []
    clients = list(connect_each(base, workers).values()) if workers > 1 else [httpx.Client(base_url=base, timeout=30)]
    try:
        for customer in customers[:10]:  # warm-up of the snapshot path (not counted)
            for client in clients:
                nba(client, customer)
        for i, customer in enumerate(customers):
            taker, asked = clients[i % len(clients)], clients[(i + 1) % len(clients)]
            start = time.perf_counter()
            nba(asked, customer)
            before.append((time.perf_counter() - start) * 1000)
            body = json.dumps({"events": [{"event_id": f"fresh-{i:06d}", "customer_id": customer,
                                           "event_type": "add_to_cart", "product_id": rng.choice(products),
                                           "occurred_at": stamp(clock.now() - timedelta(seconds=2))}]}).encode()
            post_events(taker, body, 1)
            acked = time.perf_counter()
            n = 0
            while True:
                n += 1
                action = nba(asked, customer)
                if action == "cart_recovery" or time.perf_counter() - acked > 2.0:
                    break
            if action != "cart_recovery":
                raise RuntimeError(f"customer {customer} still answered {action!r} 2 s after their add_to_cart")
            after.append((time.perf_counter() - acked) * 1000)
            first_try += n == 1
            tries.append(n)
        stayed = workers == 1 or len({worker_of(c) for c in clients}) == workers
    finally:
        for client in clients:
            client.close()
    out = {"samples": len(after), "p50_ms": round(statistics.median(after), 2), "p99_ms": round(percentile(after, 99), 2),
           "max_ms": round(max(after), 2), "first_try_share": first_try / len(after), "max_tries": max(tries),
           "baseline_nba_before_event_p50_ms": round(statistics.median(before), 2),
           "baseline_nba_before_event_p99_ms": round(percentile(before, 99), 2)}
    if workers > 1:
        out["across_workers"] = {"workers": workers, "event_to": "worker i mod N", "asked": "worker i+1 mod N",
                                 "connections_stayed_with_their_worker": stayed}
    return out


def feed(base: str, bodies: list[bytes], avoid: int | None, stop: EventType, acks: Queue,
         new: int = 100) -> None:
    """The busy and control windows' feeder, run in a process of its own (``spawn``): posts ``bodies`` (100
    events each, ``new`` of them new to the service) one every 0.1 s from its start, on a connection to a
    worker other than ``avoid`` when given; puts ``("ready", worker)``, then ``("ack", index,
    perf_counter)`` at each 2xx, then ``("done", events posted, seconds fed, max lag s)`` once ``stop`` is
    set or the bodies are spent."""
    client, worker = connect(base, avoid=avoid)
    try:
        acks.put(("ready", worker))
        start, posted, lag = time.perf_counter(), 0, 0.0
        for i, body in enumerate(bodies):
            wait = start + i * 0.1 - time.perf_counter()
            if (wait > 0 and stop.wait(wait)) or stop.is_set():
                break
            lag = max(lag, -wait)
            post_events(client, body, new)
            acks.put(("ack", i, time.perf_counter()))  # CLOCK_MONOTONIC on Linux: the same in both processes
            posted += 100
        acks.put(("done", posted, time.perf_counter() - start, lag))
    finally:
        client.close()


def receive(process: multiprocessing.Process, acks: Queue, waiting_for: str) -> tuple:
    """The feeder's next message; RuntimeError naming ``waiting_for`` if its process ends without one."""
    while True:
        try:
            return acks.get(timeout=1)
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the feeder process exited with code {process.exitcode} while this waited "
                                   f"for {waiting_for} (its traceback is above)") from None


def latency_windows(base: str, clock: ServiceClock, touched: list[str], untouched: list[str], products: list[str],
                    rounds: int, seconds: float, workers: int) -> dict:
    """Rotating idle, control and busy windows (1,000 events/s posted by another process: acknowledged
    before, or new) of single next-best-actions on one connection; with several workers the feeder posts
    to another worker."""
    feeder = Events("busy", touched, products, seed=2)
    last_event: dict[str, float] = {}  # customer -> perf_counter of the 2xx of their latest event
    last_answer: dict[str, float] = {}  # customer -> perf_counter when their latest answer was asked
    spawn = multiprocessing.get_context("spawn")
    client, measured = connect(base)
    for body in feeder.bodies(len(touched) // 100 + 1, 100, clock.now()):  # touch and answer each once
        post_events(client, body, 100)
    for customer in touched + untouched[:200]:
        last_answer[customer] = time.perf_counter()
        nba(client, customer)

    def stay() -> None:
        """Back to the measured worker if the server closed the idle connection (a new one may land on
        another worker)."""
        nonlocal client
        if worker_of(client) != measured:
            client.close()
            client, _ = connect(base, worker=measured)

    def window(mode: str) -> dict:
        """One window: ``idle``, ``busy`` (new events fed) or ``repeats`` (events the service acknowledged
        before the window fed again: received, validated and ignored, nothing applied)."""
        stay()
        busy = mode != "idle"
        bodies = feeder.bodies(int(seconds * 10) + 20, 100, clock.now()) if busy else []  # encoded before
        if mode == "repeats":  # acknowledged now (by another worker, with several): repeats in the window
            poster = connect(base, avoid=measured)[0] if workers > 1 else client
            for body in bodies:
                post_events(poster, body, 100)
            if poster is not client:
                poster.close()
        if mode != "busy":  # every touched customer answered since their last event: cached answers
            for customer in touched:
                last_answer[customer] = time.perf_counter()
                nba(client, customer)
        process, acks, stop, fed = None, spawn.Queue(), spawn.Event(), {}
        if busy:
            batch_customers = [[e["customer_id"] for e in json.loads(body)["events"]] for body in bodies]
            new = 100 if mode == "busy" else 0
            process = spawn.Process(target=feed, daemon=True,
                                    args=(base, bodies, measured if workers > 1 else None, stop, acks, new))
            process.start()
            message, fed["worker"] = receive(process, acks, "'ready'")
            if message != "ready":
                raise RuntimeError(f"the feeder process sent {message!r}; expected 'ready' first")
            time.sleep(0.3)  # the feed runs before the first measured request
            stay()  # the connection idled while the feeder process started

        def take(message: tuple) -> None:
            if message[0] == "ack" and mode == "busy":  # a repeat changes nobody
                for customer in batch_customers[message[1]]:
                    last_event[customer] = message[2]
            elif message[0] == "done":
                fed.update(posted=message[1], seconds=message[2], lag=message[3])

        def drain() -> None:
            while True:
                try:
                    take(acks.get_nowait())
                except queue.Empty:
                    return

        rng = random.Random(int(busy))
        times, fresh_times, other_times, untouched_times = [], [], [], []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            if busy:
                drain()
            pick_touched = rng.random() < 0.5
            customer = rng.choice(touched) if pick_touched else rng.choice(untouched)
            fresh = last_event.get(customer, -1.0) > last_answer.get(customer, -1.0)
            start = time.perf_counter()
            nba(client, customer)
            ms = (time.perf_counter() - start) * 1000
            last_answer[customer] = start
            times.append(ms)
            (fresh_times if fresh else other_times).append(ms)
            if not pick_touched:
                untouched_times.append(ms)
        elapsed = time.perf_counter() - started
        if process:
            stop.set()
            while "posted" not in fed:
                take(receive(process, acks, "'done' (what it posted)"))
            process.join(60)
        out = {"requests": len(times), "p50_ms": round(statistics.median(times), 2),
               "p99_ms": round(percentile(times, 99), 2), "max_ms": round(max(times), 1),
               "untouched_p50_ms": round(statistics.median(untouched_times), 2),
               "untouched_p99_ms": round(percentile(untouched_times, 99), 2),
               "not_fresh_p50_ms": round(statistics.median(other_times), 2),
               "not_fresh_p99_ms": round(percentile(other_times, 99), 2)}
        if busy:
            out |= {"fed": mode, "events_per_s": round(fed["posted"] / fed["seconds"]),
                    "feeder_max_lag_ms": round(fed["lag"] * 1000, 1)}
            if workers > 1:
                out["feeder_worker"] = fed["worker"]
        if mode == "busy":
            out |= {"fresh_share": round(len(fresh_times) / len(times), 3),
                    "fresh_p50_ms": round(statistics.median(fresh_times), 2) if fresh_times else None,
                    "fresh_p99_ms": round(percentile(fresh_times, 99), 2) if fresh_times else None}
        out["seconds"] = round(elapsed, 1)
        if worker_of(client) != measured:
            raise RuntimeError(f"the measuring connection left worker {measured} during a window; expected it "
                               "to stay (keep-alive)")
        if workers > 1:
            out["measured_worker"] = measured
        return out

    idle, busy, repeats = [], [], []
    try:
        kinds = {"idle": idle, "repeats": repeats, "busy": busy}
        for i in range(rounds):  # each kind in each place of the order alike: a machine's speed drifts
            for mode in list(kinds)[i % 3:] + list(kinds)[:i % 3]:
                kinds[mode].append(window(mode))
    finally:
        client.close()

    def med(rows: list[dict], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 2)

    out = {"mix": "50 % customers the feed touches, 50 % never touched", "rounds": rounds, "window_s": seconds,
           "feeder": "a process of its own (multiprocessing, spawn): bodies encoded before the window, each "
                     "acknowledged batch's 2xx time sent back through a queue drained between requests",
           "touched_customers": len(touched), "untouched_customers": len(untouched),
           "repeats_window": "control: the feeder posts, at the same rate, batches the service acknowledged "
                             "before the window: each is received, validated and answered, nothing applied",
           "idle": idle, "repeats": repeats, "busy": busy,
           "idle_p50_ms": med(idle, "p50_ms"), "idle_p99_ms": med(idle, "p99_ms"),
           "busy_p50_ms": med(busy, "p50_ms"), "busy_p99_ms": med(busy, "p99_ms"),
           "busy_events_per_s": med(busy, "events_per_s"), "busy_fresh_share": med(busy, "fresh_share"),
           "busy_fresh_p50_ms": med(busy, "fresh_p50_ms"), "busy_fresh_p99_ms": med(busy, "fresh_p99_ms"),
           "idle_untouched_p50_ms": med(idle, "untouched_p50_ms"), "idle_untouched_p99_ms": med(idle, "untouched_p99_ms"),
           "busy_untouched_p50_ms": med(busy, "untouched_p50_ms"), "busy_untouched_p99_ms": med(busy, "untouched_p99_ms"),
           "busy_not_fresh_p50_ms": med(busy, "not_fresh_p50_ms"),
           "busy_not_fresh_p99_ms": med(busy, "not_fresh_p99_ms"),
           "repeats_p50_ms": med(repeats, "p50_ms"), "repeats_p99_ms": med(repeats, "p99_ms"),
           "repeats_events_per_s": med(repeats, "events_per_s")}
    if workers > 1:
        out["workers"] = "the measured connection stays with one worker; the feeder posts to another one"
    return out


def ingestion(base: str, clock: ServiceClock, customers: list[str], products: list[str], seconds: float,
              runs: int, workers: int) -> dict:
    """Events/s acknowledged: first one product_view per customer of ``customers`` (each one's first event
    since the start: cold), then per (batch size, clients) the median of ``runs`` runs of ``seconds``; with
    several workers client ``c`` posts to worker ``c mod N``."""
    moment, rng = clock.now(), random.Random(4)
    first = [{"event_id": f"cold-{i:07d}", "customer_id": c, "event_type": "product_view",
              "product_id": rng.choice(products), "occurred_at": stamp(moment - timedelta(seconds=5))}
             for i, c in enumerate(customers)]
    bodies = [json.dumps({"events": first[i:i + 500]}).encode() for i in range(0, len(first), 500)]
    each = connect_each(base, workers) if workers > 1 else {}
    pids = sorted(each)
    for connection in each.values():
        connection.close()
    with httpx.Client(base_url=base, timeout=120) as client:
        start = time.perf_counter()
        for body in bodies:
            post_events(client, body, len(json.loads(body)["events"]))
        elapsed = time.perf_counter() - start
    out: dict = {"cold_first_event_per_customer": {"batch": 500, "clients": 1, "events": len(first),
                                                   "seconds": round(elapsed, 2),
                                                   "events_per_s": round(len(first) / elapsed)}}
    for size in (500, 100):
        for clients in (1, 2):
            rates = []
            for run in range(runs):
                per_client = int(seconds * 12_000 / clients / size) + 2  # more than the service can take
                makers = [Events(f"ing-{size}-{clients}-{run}-{c}", customers, products, seed=100 * run + c)
                          for c in range(clients)]
                bodies = [m.bodies(per_client, size, clock.now()) for m in makers]
                acked, ends = [0] * clients, [0.0] * clients
                connections = [connect(base, worker=pids[c % workers])[0] if pids else
                               httpx.Client(base_url=base, timeout=60) for c in range(clients)]
                start = time.perf_counter()
                threads = [threading.Thread(target=_post_for, args=(connections[c], bodies[c], size, start,
                                                                    start + seconds, acked, ends, c))
                           for c in range(clients)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                elapsed = max(ends)
                rates.append({"events": sum(acked), "seconds": round(elapsed, 2),
                              "events_per_s": round(sum(acked) / elapsed)})
                if pids:
                    rates[-1]["workers"] = [worker_of(connection) for connection in connections]
                for connection in connections:
                    connection.close()
            out[f"batch_{size}_clients_{clients}"] = {
                "batch": size, "clients": clients, "runs": rates,
                "median_events_per_s": round(statistics.median(r["events_per_s"] for r in rates))}
    return out


def _post_for(client: httpx.Client, bodies: list[bytes], size: int, start: float, stop: float, acked: list[int],
              ends: list[float], c: int) -> None:
    """Client ``c`` of an ingestion run: post ``bodies`` until ``stop``; events acknowledged and end time."""
    for body in bodies:
        if time.perf_counter() >= stop:
            break
        post_events(client, body, size)
        acked[c] += size
    ends[c] = time.perf_counter() - start


def restart(server: Server, clock: ServiceClock, pool: list[str], carted: list[str], fresh_carted: list[str],
            products: list[str], kill_after: int) -> dict:
    """SIGKILL while posting, after ``kill_after`` acknowledged events; restart; check every acknowledged one."""
    maker = Events("restart", pool, products, seed=3)
    acked_ids: list[str] = []
    carted_acked: list[str] = []
    failed: list[str] = []
    killed = threading.Event()
    base = server.base

    def post() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in range(10_000_000):
                events = [maker.one(clock.now()) for _ in range(99)]
                customer = carted[i % len(carted)]
                events.append({"event_id": f"restart-cart-{i:07d}", "customer_id": customer,
                               "event_type": "add_to_cart", "product_id": products[i % len(products)],
                               "occurred_at": stamp(clock.now() - timedelta(seconds=2))})
                try:
                    post_events(client, json.dumps({"events": events}).encode(), 100)
                except (httpx.HTTPError, RuntimeError) as exc:
                    failed.append(type(exc).__name__)
                    if killed.is_set():
                        return
                    raise
                if len(acked_ids) > 2 * kill_after + 10_000:
                    raise RuntimeError("the server still takes events after its SIGKILL")
                acked_ids.extend(e["event_id"] for e in events)
                carted_acked.append(customer)

    thread = threading.Thread(target=post)
    thread.start()
    while len(acked_ids) < kill_after and thread.is_alive():
        time.sleep(0.005)
    killed.set()
    server.kill(signal.SIGKILL)
    thread.join()
    acknowledged = list(acked_ids)
    log_path = Path(server.env["SENDWISE_EVENT_LOG"])
    started = server.start()
    logged = set()
    with log_path.open("rb") as f:
        for line in f:
            logged.add(json.loads(line)["event_id"])
    missing = [e for e in acknowledged if e not in logged]
    check = sorted(set(carted_acked))
    answers = actions(server.base, check + fresh_carted)
    not_cart = [c for c in check + fresh_carted if answers.get(c) != "cart_recovery"]
    return {"acknowledged_before_kill": len(acknowledged), "failed_requests_at_kill": failed,
            "log_lines_after_restart": len(logged), "time_to_ready_s": started.get("ready_s"),
            "peak_rss_mb": started["peak_rss_mb"], "missing_acknowledged": len(missing),
            "missing_examples": missing[:5], "carted_checked": len(check) + len(fresh_carted),
            "carted_not_cart_recovery": len(not_cart), "not_cart_examples": not_cart[:5],
            "all_applied": not missing and not not_cart and started["ready"]}


# -- runs --------------------------------------------------------------------------------------------------
def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True).stdout
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(), "commit": commit.strip(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def shop_ids(data: Path) -> tuple[list[str], list[str]]:
    tables, _ = load_data_dir(data, None)
    customers = [r[0] for r in tables.con.sql("SELECT customer_id FROM customers ORDER BY 1").fetchall()]
    products = [r[0] for r in tables.con.sql("SELECT product_id FROM products ORDER BY 1").fetchall()]
    return customers, products


def main_run(quick: bool, workers: int) -> dict:
    """Every phase on one server: one worker on the file log, or ``workers`` sharing a Redis online store
    (started here; no restart phase then)."""
    customers_n = 2_000 if quick else 10_000
    fresh_n, touched_n, untouched_n = (50, 300, 300) if quick else (200, 1_000, 1_000)
    rounds, window_s = (3, 2.0) if quick else (6, 5.0)
    ingest_s, ingest_runs = (4.0, 1) if quick else (15.0, 3)
    kill_after = 5_000 if quick else 20_000
    results: dict = {"machine": machine(), "when": datetime.now(UTC).isoformat(timespec="seconds"),
                     "customers": customers_n, "targets": TARGETS,
                     "command": "python benchmarks/bench_live.py" + (" --quick" if quick else "")
                     + (f" --workers {workers}" if workers > 1 else "")}
    data, mlruns = prepare(customers_n)
    work = Path(tempfile.mkdtemp(prefix="sendwise-bench-live-"))
    store = RedisServer(work) if workers > 1 else None
    if store:
        results["online_store"] = {"workers": workers, "redis_version": store.version, "redis": "127.0.0.1, "
                                   "appendonly yes, appendfsync always, save ''", "started_by": "this benchmark"}
    server = Server(data, mlruns, work / "events.jsonl", work, workers, store.url if store else None)
    try:
        started = server.start()
        if not started["ready"]:
            raise RuntimeError(f"the server did not start: {started['reason']} (see {work})")
        results["startup"] = started
        clock = ServiceClock(server.base)
        results["clock"] = {"mode": clock.mode, "now_at_start": clock.at.isoformat()}
        ids, products = shop_ids(data)
        rng = random.Random(0)
        rng.shuffle(ids)
        answers = actions(server.base, ids)
        candidates = [c for c in ids if answers.get(c) not in (None, "suppress", "cart_recovery")]
        fresh, carted = candidates[:fresh_n], candidates[fresh_n:2 * fresh_n]
        reserved = set(fresh + carted)
        rest = [c for c in ids if c not in reserved]
        touched, untouched, pool = rest[:touched_n], rest[touched_n:touched_n + untouched_n], rest[touched_n + untouched_n:]
        results["actions_at_start"] = dict(sorted({a: list(answers.values()).count(a)
                                                   for a in set(answers.values())}.items()))
        console.print(f"server ready in {started['ready_s']} s; clock {clock.mode}; freshness ...")
        results["freshness"] = freshness(server.base, clock, fresh, products, workers)
        console.print("latency under ingestion ...")
        results["latency_under_ingestion"] = latency_windows(server.base, clock, touched, untouched, products,
                                                             rounds, window_s, workers)
        console.print("ingestion ...")
        results["ingestion"] = ingestion(server.base, clock, pool, products, ingest_s, ingest_runs, workers)
        if store:
            results["restart"] = {"skipped": f"not run with {workers} workers on Redis (the file log's check)"}
        else:
            console.print("restart ...")
            results["restart"] = restart(server, clock, pool, carted, fresh, products, kill_after)
        results["server_rss_mb_at_end"] = round(server.rss_mb())
    finally:
        server.stop()
        if store:
            store.stop()
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["work_dir"] = str(work)
    return results


def figures(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(figure, value, target, met) rows."""
    f, lat, ing, rs = (results["freshness"], results["latency_under_ingestion"], results["ingestion"],
                       results["restart"])
    across = " (event to one worker, NBA on another)" if "across_workers" in f else ""
    rows = [(f"freshness p99: 2xx of /events -> NBA cart_recovery{across}", (f"{f['p99_ms']} ms (p50 {f['p50_ms']}, "
             f"{f['samples']} samples; NBA before the event p50 {f['baseline_nba_before_event_p50_ms']})"),
             "< 50 ms", f["p99_ms"] < TARGETS["freshness_p99_ms"]),
            ("freshness: reflected on the first try", f"{f['first_try_share']:.0%}", "100 %",
             f["first_try_share"] >= TARGETS["freshness_first_try_share"])]
    cold = ing["cold_first_event_per_customer"]
    rows.append(("ingestion, each event a customer's first (cold), batch 500, 1 client",
                 f"{cold['events_per_s']:,} events/s ({cold['events']:,} customers)", ">= 5,000",
                 cold["events_per_s"] >= TARGETS["ingestion_events_per_s"]))
    for r in [r for key, r in ing.items() if key.startswith("batch_")]:
        rows.append((f"ingestion, batch {r['batch']}, {r['clients']} client(s)",
                     f"{r['median_events_per_s']:,} events/s", ">= 5,000",
                     r["median_events_per_s"] >= TARGETS["ingestion_events_per_s"]))
    for q in ("p50", "p99"):
        idle, busy = lat[f"idle_{q}_ms"], lat[f"busy_{q}_ms"]
        rows.append((f"NBA {q} at {lat['busy_events_per_s']:,.0f} events/s vs idle",
                     f"{busy} ms vs {idle} ms ({busy / idle:.2f}x; {lat['busy_fresh_share']:.0%} computed fresh)",
                     "<= 1.10x", busy / idle <= TARGETS["busy_vs_idle_max_ratio"]))
    for q in ("p50", "p99"):
        idle, busy = lat[f"idle_untouched_{q}_ms"], lat[f"busy_untouched_{q}_ms"]
        rows.append((f"  of which untouched customers, {q}", f"{busy} ms vs {idle} ms idle ({busy / idle:.2f}x)",
                     "-", None))
    rows.append(("  computed fresh under ingestion, p50 / p99",
                 f"{lat['busy_fresh_p50_ms']} / {lat['busy_fresh_p99_ms']} ms", "-", None))
    if "repeats_p50_ms" in lat:  # the control: the same feed, received and validated, nothing applied
        for q in ("p50", "p99"):
            idle, fed = lat[f"idle_{q}_ms"], lat[f"repeats_{q}_ms"]
            rate = f"{lat['repeats_events_per_s']:,.0f}"
            name = f"NBA {q} at {rate} repeated events/s (control, nothing applied)"
            rows.append((f"{name} vs idle",
                         f"{fed} ms vs {idle} ms ({fed / idle:.2f}x)", "-", None))
    if "skipped" in rs:
        rows.append(("restart", rs["skipped"], "-", None))
        return rows
    rows.append(("restart: every acknowledged event applied",
                 (f"{rs['acknowledged_before_kill']:,} acked, {rs['missing_acknowledged']} missing from the log, "
                 f"{rs['carted_not_cart_recovery']} of {rs['carted_checked']} carted not cart_recovery"),
                 "0 missing", rs["all_applied"]))
    rows.append(("restart: time to ready", (f"{rs['time_to_ready_s']} s ({rs['log_lines_after_restart']:,} logged "
                 f"events, {results['customers']:,} customers; first start {results['startup']['ready_s']} s)"),
                 "-", None))
    return rows


def show(title: str, rows: list[tuple[str, str, str, bool | None]]) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("figure", "measured", "target", "met"):
        table.add_column(col)
    for name, value, target, met in rows:
        table.add_row(name, value, target, "-" if met is None else "[green]met[/]" if met else "[red]not met[/]")
    console.print(table)


# -- time to ready at scale --------------------------------------------------------------------------------
def write_log(path: Path, data: Path, events: int, start: datetime) -> None:
    """``events`` events over the shop's customers after ``start``, appended with EventLog (validated)."""
    customers, products = shop_ids(data)
    maker, log, step = Events("scale", customers, products, seed=7), EventLog(path), 10_000
    span = timedelta(hours=6) / events
    for i in range(0, events, step):
        batch = [maker.one(start + timedelta(seconds=31) + span * (i + j)) for j in range(min(step, events - i))]
        log.append(parse_events({"events": batch}, now=start + timedelta(days=2)))


def scale_run(sizes: list[int], events: int, limit_s: float) -> dict:
    _, mlruns = prepare(10_000)
    max_rss_mb = 0.6 * psutil.virtual_memory().total / 2**20
    out: dict = {"machine": machine(), "when": datetime.now(UTC).isoformat(timespec="seconds"),
                 "models": "trained on the 10,000-customer shop (seed 0)", "limit_s": limit_s,
                 "max_rss_mb": round(max_rss_mb), "logged_events": events, "sizes": {}}
    for n in sizes:
        data = WORK / ("demo_1m" if n == 1_000_000 else f"demo_{n}")
        if not (data / "orders.parquet").exists():
            console.print(f"generating a shop of {n:,} customers ...")
            generate_demo(DemoShop(customers=n, seed=0), data)
        work = Path(tempfile.mkdtemp(prefix=f"sendwise-bench-live-{n}-"))
        row: dict = {}
        server = Server(data, mlruns, work / "events.jsonl", work)
        try:
            row["empty_log"] = server.start(limit_s, max_rss_mb)
            console.print(f"{n:,} customers, empty log: {row['empty_log']}")
            if not row["empty_log"]["ready"]:
                out["sizes"][str(n)] = row
                continue
            clock = ServiceClock(server.base)
        finally:
            server.stop()
        prepared_at = time.perf_counter()
        write_log(work / "events.jsonl", data, events, clock.at)
        row["log_written_s"] = round(time.perf_counter() - prepared_at, 1)
        row["log_mb"] = round((work / "events.jsonl").stat().st_size / 2**20)
        server = Server(data, mlruns, work / "events.jsonl", work)
        try:
            row["with_log"] = server.start(limit_s, max_rss_mb)
            console.print(f"{n:,} customers, {events:,} logged events: {row['with_log']}")
        finally:
            server.stop()
        row["work_dir"] = str(work)
        out["sizes"][str(n)] = row
    out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=1,
                        help="N >= 2: N workers sharing an online store in a redis-server started here")
    parser.add_argument("--scale", default="", help="only time to ready, for these shop sizes (comma-separated)")
    parser.add_argument("--scale-events", type=int, default=1_000_000, help="events in the log for --scale")
    parser.add_argument("--scale-limit", type=float, default=900.0, help="seconds a --scale start may take")
    args = parser.parse_args()
    if args.workers < 1 or (args.workers > 1 and args.scale):
        parser.error(f"--workers is {args.workers}; expected 1, or 2 and more without --scale")
    if args.scale:
        sizes = [int(s) for s in args.scale.split(",")]
        results = scale_run(sizes, args.scale_events, args.scale_limit)
        results["command"] = " ".join(["python benchmarks/bench_live.py", *sys.argv[1:]])
        table = Table(title=f"Time to ready (models of the 10k shop; log of {args.scale_events:,} events)",
                      title_justify="left")
        for col in ("customers", "empty log: ready s", "peak RSS MB", "with log: ready s", "peak RSS MB"):
            table.add_column(col, justify="right")
        for n, row in results["sizes"].items():
            cells = []
            for key in ("empty_log", "with_log"):
                r = row.get(key, {})
                cells += [str(r.get("ready_s", r.get("reason", "-"))), str(r.get("peak_rss_mb", "-"))]
            table.add_row(f"{int(n):,}", *cells)
        console.print(table)
        out = RESULTS / "live_scale.json"
    else:
        results = main_run(args.quick, args.workers)
        rows = figures(results)
        results["figures"] = [{"figure": a, "measured": b, "target": c, "met": d} for a, b, c, d in rows]
        on = f", {args.workers} workers on Redis" if args.workers > 1 else ""
        show(f"Live profiles on 127.0.0.1, {results['customers']:,} customers{on}, {os.cpu_count()} cores", rows)
        name = "live_workers" if args.workers > 1 else "live"
        out = RESULTS / (f"{name}_quick.json" if args.quick else f"{name}.json")
    out.write_text(json.dumps(results, indent=1) + "\n")
    console.print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
