"""Benchmark of the point-in-time customer feature build: sendwise (DuckDB) against a naive pandas twin.

    python benchmarks/bench_features.py            # full run, writes benchmarks/results/features.json
    python benchmarks/bench_features.py --quick    # smoke run, writes benchmarks/results/features_quick.json
    python benchmarks/bench_features.py --cases online_retail_12_as_of,generated_1m_one_as_of --no-naive \
        --out /tmp/features_after.json               # some cases, sendwise only (a before/after comparison)

Input data (the imported Online Retail set, generated shops) is prepared once, untimed, under
``benchmarks/.work/``. Every measurement then runs in its own child process (this script re-invoked
with ``--child``), so that the peak RSS reported is that of one implementation on one case. A child
that runs past its time limit or memory guard is killed and recorded as "did not finish".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import psutil
import pyarrow
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table as RichTable

from features._reference import reference_features
from features.build import build_features
from features.demo import DemoShop, generate_demo
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from features.schema import SPECS, Table
from features.tables import create_empty, new_connection

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
ONLINE_RETAIL_CSV = HERE.parent.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"

OURS = "sendwise duckdb"
NAIVE = "naive pandas"
REPEATS = 3  # timed runs per child; the median is reported
REPEAT_BUDGET_S = 30.0  # a naive child whose first run takes longer than this runs only once
CHILD_TIMEOUT_S = 600.0
MEMORY_GUARD_FRACTION = 0.75  # a child above this share of the machine's memory is killed
GENERATED_AS_OF = "2025-10-01"
ONLINE_RETAIL_AS_OF = [
    (pd.Timestamp("2011-12-09") - pd.DateOffset(months=i)).strftime("%Y-%m-%d") for i in range(12)
]
MB = 1024 * 1024

console = Console(width=None if sys.stdout.isatty() else 160)


@dataclass(frozen=True)
class Case:
    """One input data set and the as_of dates to build features at, with sendwise's targets."""

    name: str
    description: str
    prepare: Callable[[], Path]
    as_of: list[str]
    target_total_s: float | None = None
    target_peak_rss_mb: float | None = None

    def target_text(self) -> str:
        parts = []
        if self.target_total_s is not None:
            parts.append(f"< {self.target_total_s:g} s")
        if self.target_peak_rss_mb is not None:
            parts.append(f"< {self.target_peak_rss_mb / 1024:g} GB")
        return ", ".join(parts) or "-"


# -- data preparation (parent, untimed) -------------------------------------------------------------


def prepared(name: str, write: Callable[[Path], object]) -> Path:
    """``WORK/name``, written by ``write`` into a partial folder first unless it already exists."""
    target = WORK / name
    if not target.exists():
        partial = WORK / f"{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        console.log(f"preparing {target} (once, untimed)")
        write(partial)
        partial.rename(target)
    return target


def online_retail() -> Path:
    """The UCI Online Retail CSV imported to a contract directory."""
    return prepared("online_retail", lambda out: import_online_retail(ONLINE_RETAIL_CSV, out))


def demo(customers: int) -> Callable[[], Path]:
    """A preparer of the generated shop with ``customers`` customers (seed 0)."""
    def prepare() -> Path:
        name = f"demo_{customers // 1000}k" if customers < 1_000_000 else f"demo_{customers // 1_000_000}m"
        return prepared(name, lambda out: generate_demo(DemoShop(customers=customers, seed=0), out))

    return prepare


def table_rows(data_dir: Path) -> dict[str, int]:
    """Row count of each contract table file in ``data_dir``, from parquet metadata."""
    return {t.value: pq.ParquetFile(data_dir / f"{t.value}.parquet").metadata.num_rows
            for t in Table if (data_dir / f"{t.value}.parquet").exists()}


def generated(name: str, customers: int, **targets: float) -> Case:
    """A generated shop of ``customers`` (seed 0), features at one as_of."""
    return Case(name, f"generated shop, {customers:,} customers (seed 0), one as_of", demo(customers),
                [GENERATED_AS_OF], **targets)


def cases(quick: bool) -> list[Case]:
    retail = Case("online_retail_12_as_of", "UCI Online Retail (imported), features at 12 monthly as_of",
                  online_retail, ONLINE_RETAIL_AS_OF, target_total_s=5.0)
    if quick:
        return [retail, generated("generated_20k_one_as_of", 20_000)]
    return [
        retail,
        generated("generated_100k_one_as_of", 100_000),
        generated("generated_1m_one_as_of", 1_000_000, target_total_s=60.0, target_peak_rss_mb=8 * 1024),
    ]


# -- children: one implementation on one case ---------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def repeat(run: Callable[[], float], budget_s: float = float("inf")) -> None:
    """Call ``run`` (which returns its timed seconds) REPEATS times, once if the first is over budget."""
    if run() <= budget_s:
        for _ in range(REPEATS - 1):
            run()


def emit(kind: str, payload: dict[str, Any]) -> None:
    """One JSON line on stdout for the parent (children print nothing else there)."""
    print(json.dumps({"kind": kind, **payload}), flush=True)


def child_ours(data_dir: Path, as_of: Sequence[str], outputs_dir: Path) -> None:
    """Time load_data_dir, then build_features at every as_of; each run starts from a fresh load.

    The features of the last run are then written to ``outputs_dir/<as_of>.parquet``.
    """
    loads: list[float] = []
    builds: list[float] = []
    outputs: list[pd.DataFrame] = []

    def run() -> float:
        start = time.perf_counter()
        tables, _ = load_data_dir(data_dir)
        loaded = time.perf_counter()
        outputs[:] = [build_features(tables, d) for d in as_of]
        built = time.perf_counter()
        tables.con.close()
        loads.append(loaded - start)
        builds.append(built - loaded)
        return built - start

    repeat(run)
    totals = [a + b for a, b in zip(loads, builds, strict=True)]
    emit("result", {"load_s": loads, "features_s": builds, "total_s": totals,
                    "rows": sum(len(o) for o in outputs), "peak_rss_mb": peak_rss_mb()})
    outputs_dir.mkdir(parents=True, exist_ok=True)
    for d, frame in zip(as_of, outputs, strict=True):
        frame.to_parquet(outputs_dir / f"{d}.parquet", index=False)


def read_frames(data_dir: Path) -> dict[str, pd.DataFrame]:
    """Each contract table as pandas reads its parquet file, unvalidated; a table without a file is an
    empty frame of the contract's columns."""
    frames = {}
    with new_connection() as con:
        for table in Table:
            path = data_dir / f"{table.value}.parquet"
            if path.exists():
                frames[table.value] = pd.read_parquet(path)
            else:
                create_empty(con, SPECS[table])
                frames[table.value] = con.table(table.value).df()
    return frames


def child_naive(data_dir: Path, as_of: Sequence[str], outputs_dir: Path) -> None:
    """Time the pandas reference, then check that it agrees with sendwise's features in ``outputs_dir``.

    Its load (once) is pandas reading the parquet files, with no validation: what a plain pandas
    pipeline does, and without DuckDB's memory in this process.
    """
    start = time.perf_counter()
    frames = read_frames(data_dir)
    load_s = time.perf_counter() - start
    emit("loaded", {"load_s": load_s})
    builds: list[float] = []
    outputs: list[pd.DataFrame] = []

    def run() -> float:
        start = time.perf_counter()
        outputs[:] = [reference_features(**frames, as_of=d) for d in as_of]
        builds.append(time.perf_counter() - start)
        return builds[-1]

    repeat(run, REPEAT_BUDGET_S)
    emit("result", {"load_s": [load_s], "features_s": builds, "total_s": [load_s + b for b in builds],
                    "rows": sum(len(o) for o in outputs), "peak_rss_mb": peak_rss_mb()})
    theirs = [outputs_dir / f"{d}.parquet" for d in as_of]
    if not all(path.exists() for path in theirs):
        emit("agreement", {"not_checked": "sendwise wrote no features to compare with"})
        return
    differing = {d: differing_rows(pd.read_parquet(path), ref)
                 for d, path, ref in zip(as_of, theirs, outputs, strict=True)}
    emit("agreement", {"as_of_compared": len(as_of),
                       "differing_rows": {d: cols for d, cols in differing.items() if cols}})


def differing_rows(ours: pd.DataFrame, ref: pd.DataFrame) -> dict[str, int]:
    """Per column, the rows where the two builds differ: a null against a value, or values apart
    beyond float tolerance. Different column names or row counts are reported under ``<shape>``."""
    if list(ours.columns) != list(ref.columns) or len(ours) != len(ref):
        return {"<shape>": abs(len(ours) - len(ref))}
    differ = {}
    for col in ours.columns:
        a, b = ours[col], ref[col]
        missing = a.isna().to_numpy()
        bad = missing != b.isna().to_numpy()
        both = ~(missing | bad)
        x, y = a[both].to_numpy(), b[both].to_numpy()
        if pd.api.types.is_numeric_dtype(a) and not pd.api.types.is_bool_dtype(a):
            bad[both] = ~np.isclose(x.astype(float), y.astype(float), rtol=1e-6, atol=1e-9)
        else:
            bad[both] = x != y
        if bad.any():
            differ[col] = int(bad.sum())
    return differ


# -- parent: run children, guard them, collect --------------------------------------------------------


def run_child(impl: str, data_dir: Path, as_of: Sequence[str], outputs_dir: Path,
              memory_guard_mb: float) -> dict[str, Any]:
    """Run one child, killing it past CHILD_TIMEOUT_S or ``memory_guard_mb``; its parsed report."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", impl, "--data", str(data_dir),
           "--as-of", ",".join(as_of), "--outputs", str(outputs_dir)]
    console.log(f"{impl}: {data_dir.name}, {len(as_of)} as_of")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    sampled_peak_mb, killed_for = 0.0, None
    while proc.poll() is None:
        try:
            sampled_peak_mb = max(sampled_peak_mb, watched.memory_info().rss / MB)
        except psutil.NoSuchProcess:
            break
        if time.monotonic() - start > CHILD_TIMEOUT_S:
            killed_for = f"did not finish within {CHILD_TIMEOUT_S:g} s"
        elif sampled_peak_mb > memory_guard_mb:
            killed_for = f"exceeded the {memory_guard_mb / 1024:.1f} GB memory guard"
        if killed_for:
            proc.kill()
            break
        time.sleep(0.1)
    stdout, _ = proc.communicate()
    elapsed = time.monotonic() - start
    reports = {r.pop("kind"): r for r in (json.loads(line) for line in stdout.splitlines()
                                          if line.startswith('{"kind"'))}
    result = reports.get("result")
    if result is None:
        why = killed_for or f"exited with status {proc.returncode}"
        if impl == NAIVE:
            why += " (in the feature build)" if "loaded" in reports else " (loading)"
        return {"finished": False, "why": why, "wall_s": round(elapsed, 1),
                "sampled_peak_rss_mb": round(sampled_peak_mb, 1)}
    for key in ("load_s", "features_s", "total_s"):
        runs = [round(x, 3) for x in result[key]]
        result[key] = {"median": round(statistics.median(result[key]), 3), "runs": runs}
    result.update(finished=True, wall_s=round(elapsed, 1), peak_rss_mb=round(result["peak_rss_mb"], 1))
    if "agreement" in reports:
        result["agreement"] = reports["agreement"]
    elif impl == NAIVE:
        result["agreement"] = {"not_checked": killed_for or f"exited with status {proc.returncode}"}
    return result


def judge(case: Case, ours: dict[str, Any]) -> dict[str, bool]:
    """Each of the case's targets: met or not (a run that did not finish meets none)."""
    met = {}
    if case.target_total_s is not None:
        met["total_s"] = ours["finished"] and ours["total_s"]["median"] < case.target_total_s
    if case.target_peak_rss_mb is not None:
        met["peak_rss_mb"] = ours["finished"] and ours["peak_rss_mb"] < case.target_peak_rss_mb
    return met


def run_case(case: Case, memory_guard_mb: float, naive_too: bool = True) -> dict[str, Any]:
    """Both implementations on ``case`` (sendwise's alone unless ``naive_too``); the JSON record of the case."""
    data_dir = case.prepare()
    outputs_dir = WORK / "outputs" / case.name
    shutil.rmtree(outputs_dir, ignore_errors=True)
    ours = run_child(OURS, data_dir, case.as_of, outputs_dir, memory_guard_mb)
    naive = (run_child(NAIVE, data_dir, case.as_of, outputs_dir, memory_guard_mb) if naive_too
             else {"finished": False, "why": "not run (--no-naive)", "wall_s": 0.0, "sampled_peak_rss_mb": 0.0})
    met = judge(case, ours)
    record: dict[str, Any] = {
        "case": case.name,
        "description": case.description,
        "data": {"dir": str(data_dir.relative_to(HERE.parent)), "table_rows": table_rows(data_dir)},
        "as_of": case.as_of,
        "targets": {"total_s": case.target_total_s, "peak_rss_mb": case.target_peak_rss_mb},
        "results": {OURS: ours, NAIVE: naive},
        "met": met,
        "passed": all(met.values()),
    }
    if ours["finished"] and naive["finished"]:
        record["speedup"] = {k: round(naive[k]["median"] / ours[k]["median"], 2)
                             for k in ("features_s", "total_s")}
    return record


# -- report ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine, library versions and commit the numbers were taken on."""
    with new_connection() as con:
        threads, memory_limit = con.execute(
            "SELECT current_setting('threads'), current_setting('memory_limit')").fetchone()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.processor())
    commit, status = (subprocess.run(["git", *cmd], cwd=HERE, capture_output=True, text=True).stdout.strip()
                      for cmd in (["rev-parse", "HEAD"], ["status", "--porcelain"]))
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_total_mb": round(psutil.virtual_memory().total / MB),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "duckdb_threads": threads,
        "duckdb_memory_limit": memory_limit,
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "git_commit": commit + (" (uncommitted changes)" if status else ""),
    }


def render(records: list[dict[str, Any]], case_list: list[Case]) -> RichTable:
    """The results table: one row per case and implementation."""
    table = RichTable(title="Point-in-time customer features", title_justify="left")
    columns = ("case", "implementation", "rows (customers × as_of)", "load s", "features s",
               "median total s", "peak RSS MB", "target", "met?")
    for col in columns:
        table.add_column(col, justify="left" if col in ("case", "implementation", "target") else "right")
    for record, case in zip(records, case_list, strict=True):
        for impl in (OURS, NAIVE):
            r = record["results"][impl]
            ours = impl == OURS
            first = (case.name if ours else "", impl)
            verdict = ("yes" if record["passed"] else "[red]NO[/]") if record["met"] else "-"
            last = (case.target_text(), verdict) if ours else ("-", "-")
            if r["finished"]:
                measured = (f"{r['rows']:,} ({len(case.as_of)} as_of)", f"{r['load_s']['median']:.2f}",
                            f"{r['features_s']['median']:.2f}", f"{r['total_s']['median']:.2f}",
                            f"{r['peak_rss_mb']:,.0f}")
            else:  # the sampled peak when it was killed
                measured = ("-", "-", "-", r["why"], f"{r['sampled_peak_rss_mb']:,.0f}+")
            table.add_row(*first, *measured, *last)
    return table


def print_notes(records: list[dict[str, Any]]) -> None:
    """Speed-ups, and whether the two builds agree, per case."""
    for record in records:
        if "speedup" in record:
            s = record["speedup"]
            console.print(f"{record['case']}: naive time / sendwise time = {s['total_s']:.1f}x in total, "
                          f"{s['features_s']:.1f}x for the feature build alone")
        agreement = record["results"][NAIVE].get("agreement", {})
        if agreement.get("differing_rows"):
            differ = agreement["differing_rows"]
            console.print(f"[yellow]{record['case']}: the two builds differ (rows per column):[/] {differ}")
        elif "not_checked" in agreement:
            console.print(f"{record['case']}: agreement not checked ({agreement['not_checked']})")
        elif agreement:
            console.print(f"{record['case']}: both builds agree at all {agreement['as_of_compared']} as_of")


def main_parent(quick: bool, only: Sequence[str] = (), naive_too: bool = True, out: Path | None = None) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    info = machine()
    memory_guard_mb = MEMORY_GUARD_FRACTION * info["memory_total_mb"]
    case_list = cases(quick)
    unknown = sorted(set(only) - {c.name for c in case_list})
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; expected some of "
                         f"{', '.join(c.name for c in case_list)}")
    case_list = [c for c in case_list if not only or c.name in only]
    records = [run_case(case, memory_guard_mb, naive_too) for case in case_list]
    console.print(render(records, case_list))
    print_notes(records)
    out = out or RESULTS / ("features_quick.json" if quick else "features.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "point-in-time customer features",
        "mode": "quick" if quick else "full",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"repeats": REPEATS, "repeat_budget_s": REPEAT_BUDGET_S,
                     "child_timeout_s": CHILD_TIMEOUT_S, "memory_guard_mb": round(memory_guard_mb)},
        "cases": records,
        "passed": all(r["passed"] for r in records),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results: {out}")
    return 0 if report["passed"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="20,000 generated customers instead of 100k and 1M")
    parser.add_argument("--cases", default="", help="comma-separated case names to run (default: all)")
    parser.add_argument("--no-naive", action="store_true", help="time sendwise only, not the pandas twin")
    parser.add_argument("--out", type=Path, help="where the JSON goes (default: benchmarks/results/...)")
    parser.add_argument("--child", choices=(OURS, NAIVE), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--outputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--as-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = child_ours if args.child == OURS else child_naive
        child(args.data, args.as_of.split(","), args.outputs)
        return 0
    only = [name for name in args.cases.split(",") if name]
    return main_parent(args.quick, only, not args.no_naive, args.out)


if __name__ == "__main__":
    sys.exit(main())
