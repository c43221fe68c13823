"""The domain packages keep their declared order (``[tool.importlinter]`` in pyproject.toml):
sendwise > experiments > serving > training > features, no cycles, imports inside functions included."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    script = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([script, "--no-cache"], check=False, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_domain_layers_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_inside_a_function_breaks_the_contract(tmp_path: Path) -> None:
    """The same contract on a copy of the packages with one upward import hidden in a function."""
    for package in ("features", "training", "serving", "experiments", "sendwise"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "training" / "upward.py").write_text(textwrap.dedent("""
        def late() -> None:
            from serving.service import Sendwise  # noqa: F401, PLC0415
    """))
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "training.upward -> serving.service" in result.stdout
