"""A real install: the wheel, installed into a fresh virtual environment, runs `layerwatch demo` from a
folder outside the checkout, with the model, policy and config it carries.

The new environment gets LayerWatch only from the wheel; its dependencies (torch and the rest, gigabytes)
come from the test environment's site-packages through a path file, which Python reads as a plain path: the
checkout's editable install there (a finder registered by a .pth of its own) is not seen.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from peers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_wheel_carries_its_data_and_runs_the_demo_from_any_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO)]
    build += ["-w", str(wheels)]
    subprocess.run(build, check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = wheels.glob("layerwatch-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())  # fmt: skip
    (site / "layerwatch-test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)

    away = tmp_path / "elsewhere"  # not the checkout: nothing may be found through it
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [py, "-c", "import segmentation.inference as i, monitor.policy as p; print(i.DEFAULT_MODEL); "
                   "print(p.DEFAULT_POLICY); print(i.__file__)"],
        capture_output=True, text=True, cwd=away, env=env, timeout=120,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    model, policy, module = (Path(line) for line in where.stdout.split())
    for path in (model, policy, module):
        assert path.is_relative_to(venv) and path.exists(), where.stdout
    demo = subprocess.run(
        [venv / "bin" / "layerwatch", "demo", "--headless", "--layers", "6", "--scenario", "clean", "--out", "run"],
        capture_output=True, text=True, cwd=away, env=env, timeout=600,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert list((away / "run" / "records" / "demo").glob("*.h5")), demo.stdout
    assert "Traceback" not in demo.stderr
