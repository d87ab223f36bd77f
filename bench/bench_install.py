"""The wheel: its size, and the time to install it into a fresh virtual environment.

Baseline, in the same run: installing a wheel of an empty package (pip's own cost). Dependencies
(torch, onnxruntime and the rest, about 2 GB from an index) are not counted: the new environments reach
this one's through a path file, as tests/integration/test_install.py does.

    .venv/bin/python bench/bench_install.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, median_p95

REPO = Path(__file__).resolve().parent.parent


def _wheel(project: Path, out: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(project)]
    cmd += ["-w", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return next(out.glob("*.whl"))


def _install_seconds(wheel: Path, where: Path) -> float:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    py = where / "bin" / "python"
    site = subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True)
    (Path(site.strip()) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    t = time.perf_counter()
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        empty = root / "empty"
        (empty / "emptypkg").mkdir(parents=True)
        (empty / "emptypkg" / "__init__.py").write_text("")
        (empty / "pyproject.toml").write_text('[project]\nname = "emptypkg"\nversion = "0"\n')
        base_wheel = _wheel(empty, root / "w0")
        ours = _wheel(REPO, root / "w1")
        base = [_install_seconds(base_wheel, root / f"b{i}") for i in range(args.repeat)]
        mine = [_install_seconds(ours, root / f"m{i}") for i in range(args.repeat)]
        size = ours.stat().st_size
    (bm, bp), (mm, mp) = median_p95(base), median_p95(mine)
    print(f"machine: {machine()}")
    print(f"wheel {ours.name}: {size / 1e6:.1f} MB (model, ONNX twin, policy and config included)")
    print(f"install (no dependencies), {args.repeat} fresh environments: median {mm:.2f} s, p95 {mp:.2f} s")
    print(f"baseline, an empty package's wheel: median {bm:.2f} s, p95 {bp:.2f} s; ratio {mm / bm:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
