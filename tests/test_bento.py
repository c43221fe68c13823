"""`bentoml build` packs every module the service imports: the bento runs without this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_bento_holds_every_module_the_service_imports(tmp_path: Path) -> None:
    env = os.environ | {"BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    build = subprocess.run([sys.executable, "-m", "bentoml", "build"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    src = next((tmp_path / "home" / "bentos" / "sendwise").glob("*/src"))
    # -S: no site processing, so the editable install's path hook is not there; third-party packages only
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    code = (f"import sys; sys.path[:0] = ['.']; sys.path += {site_packages!r}; "
            "import serving.service, training.recommenders.pyfunc_model, serving; print(serving.__file__)")
    run = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=src, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert Path(run.stdout.strip()).resolve().is_relative_to(src.resolve())  # from the bento, not the checkout
    # The service needs only the packages below it (pyproject.toml's import layers): the bento ships no
    # experiments/ (analysis) and no sendwise/ (commands, console, demo).
    assert {p.name for p in src.iterdir() if p.is_dir()} >= {"features", "training", "serving"}
    assert not (src / "experiments").exists() and not (src / "sendwise").exists()
