"""Report time and peak memory for 200 and 1000 layers at 1024x1024.

Writes a simulated build record per size (as the monitor writes it), runs the report (streamed 3D
components, per-part verdicts, CSV/JSON/HTML) in a child process and prints its wall time and peak
resident memory. Baseline in the same run: reading every layer's class masks alone (the I/O floor).

    .venv/bin/python bench/bench_report.py [--layers 200,1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, write_simulated_record

CHILD = """
import sys, time, resource
sys.path.insert(0, {root!r})
from pathlib import Path
mode, path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
t = time.perf_counter()
if mode == "report":
    from dashboards.report import analyze, write_report
    r = analyze(path)
    write_report(r, out)
    extra = f"{{len(r['defects'])}} defects"
else:
    import h5py
    from monitor.record import images_path
    with h5py.File(path, "r") as f:
        n = f[images_path(f)].shape[0]
        for k in range(n):
            for c in range(5):
                f[f"slices/segmentation_results/{{c}}"][k]
    extra = ""
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, extra)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="200,1000")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.layers.split(",")):
            path = Path(tmp) / f"b{n}.h5"
            seconds = write_simulated_record(path, n, 1024)
            print(f"{n} layers: record written in {seconds:.0f} s ({path.stat().st_size / 1e9:.2f} GB)")
            res = {}
            for mode in ("read", "report"):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD.format(root=root), mode, str(path), str(Path(tmp) / f"r{n}")],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split(maxsplit=2)
                res[mode] = (float(out[0]), int(out[1]) / 1024, out[2].strip() if len(out) > 2 else "")
            r_s, r_mb, _ = res["read"]
            p_s, p_mb, extra = res["report"]
            print(
                f"{n} layers at 1024x1024: report {p_s:.1f} s, peak memory {p_mb:.0f} MB ({extra}); "
                f"reading the masks alone (baseline) {r_s:.1f} s, {r_mb:.0f} MB; ratio {p_s / r_s:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
