"""Our A/B statistics against GrowthBook's gbstats (slow: builds gbstats' own virtual environment)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_statistics_agree_with_gbstats(tmp_path: Path) -> None:
    out = tmp_path / "gbstats_agreement.json"  # not the committed results file
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gbstats_agreement.py"), "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    must = [c for c in result["checks"] if c["must_agree"]]
    assert len(must) >= 7 and all(c["agrees"] and c["largest_gap"] <= 1e-3 for c in must)
