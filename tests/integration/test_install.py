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


def test_a_plain_install_is_a_monitoring_box_without_torch(tmp_path: Path) -> None:
    """`pip install layerwatch` (the wheel with its dependencies resolved by pip, the [train] extra not asked
    for): no PyTorch, under 1.2 GB, and the demo, segment, replay, compare, report, record, security and the
    dashboard run from the shipped .onnx; training says in one line what to install."""
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO)]
    subprocess.run([*build, "-w", str(wheels)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = wheels.glob("layerwatch-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"plain install: {size / 1e9:.2f} GB")
    assert size < 1.2e9, f"{size / 1e9:.2f} GB"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    away = tmp_path / "elsewhere"
    away.mkdir()

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "layerwatch"), *args], capture_output=True, text=True, cwd=away,
                              env=env, timeout=timeout)  # fmt: skip

    torch = subprocess.run([venv / "bin" / "python", "-c", "import torch"], capture_output=True, text=True)
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr
    demo = run("demo", "--headless", "--out", "run")  # the warp from layer 14, paused
    assert demo.returncode == 0 and "PAUSE requested" in demo.stdout, demo.stdout[-2000:] + demo.stderr[-2000:]
    samples = REPO / "data" / "samples"
    seg = run("segment", str(samples / "layers"), "--out", "seg", "--verbose")
    from segmentation.hardware import cpu_info

    # auto: OpenVINO where this CPU computes bf16 natively (and bf16 agreed with f32 here), else ONNX Runtime
    allowed = ("engine: openvino", "engine: onnx") if cpu_info().bf16 else ("engine: onnx",)
    assert seg.returncode == 0 and "segmented 7 image(s)" in seg.stdout, seg.stderr
    assert any(e in seg.stderr for e in allowed), seg.stderr
    build_file = samples / "builds" / "warp-512.h5"
    assert run("replay", str(build_file), "--out", "a.h5").returncode == 0
    assert run("replay", str(build_file), "--out", "b.h5", "--engine", "onnx").returncode == 0
    compared = run("compare", "a.h5", "b.h5")
    assert compared.returncode == 0 and "decisions identical" in compared.stdout, compared.stdout
    assert run("report", "a.h5", "--out", "report").returncode == 0 and (away / "report" / "report.json").is_file()
    assert run("record", "check", "a.h5").returncode == 0
    assert run("security", "broker-config", "--printers", "p1", "--out", "broker").returncode == 0
    train = run("train", "--out", "t")
    assert train.returncode == 2 and train.stderr.count("\n") == 1
    assert "pip install 'layerwatch[train]'" in train.stderr and "Traceback" not in train.stderr
    from peers import free_port, wait_port

    port = free_port()
    dash = subprocess.Popen([str(venv / "bin" / "layerwatch"), "dashboard", "--records", "run/records",
                             "--port", str(port)], cwd=away, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port, 60, None, None)
        import httpx

        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
    finally:
        dash.terminate()
        dash.wait(30)
