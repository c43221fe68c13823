"""Our A/B statistics against GrowthBook's gbstats (slow: builds gbstats' own virtual environment)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_statistics_agree_with_gbstats() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gbstats_agreement.py")], capture_output=True,
                         text=True, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((ROOT / "benchmarks" / "results" / "gbstats_agreement.json").read_text())
    must = [c for c in result["checks"] if c["must_agree"]]
    assert len(must) >= 7 and all(c["agrees"] and c["largest_gap"] <= 1e-3 for c in must)
