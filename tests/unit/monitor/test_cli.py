"""The command line: the mask contract, and one clear line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.cli import main
from monitor.settings import EXIT_CONFIG
from segmentation.dataset import write_layer_image
from segmentation.simulator import SimBuild


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good images of every accepted kind, and bad files of every foreseeable kind."""
    d = tmp_path_factory.mktemp("images")
    layer = SimBuild(77, 200, 150, 20).layer(15)
    gray = layer.image if layer.image.ndim == 2 else cv2.cvtColor(layer.image, cv2.COLOR_RGB2GRAY)
    gray8 = (gray / 257).astype(np.uint8) if gray.dtype == np.uint16 else gray
    cv2.imwrite(str(d / "gray8.png"), gray8)
    cv2.imwrite(str(d / "gray16.png"), gray8.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "color.jpg"), cv2.cvtColor(gray8, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(d / "color16.tif"), cv2.cvtColor(gray8, cv2.COLOR_GRAY2BGR).astype(np.uint16) * 257)
    cv2.imwrite(str(d / "small.png"), gray8[:33, :47])
    return d


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.png").write_bytes(b"")
    (d / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    png = (image_dir / "gray8.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    jpg = (image_dir / "color.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (d / "notes.gif").write_bytes(b"GIF89a")
    cv2.imwrite(str(d / "huge.png"), np.zeros((300, 400), np.uint8))
    cv2.imwrite(str(d / "fine.png"), cv2.imread(str(image_dir / "gray8.png"), cv2.IMREAD_UNCHANGED))
    return d


def test_help_lists_the_subcommands() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("demo", "segment", "evaluate", "synth", "train", "export-onnx"):
        assert cmd in r.stdout


def test_segment_writes_one_class_id_png_per_input(image_dir: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "out"
    code = main(["segment", str(image_dir), "--out", str(out), "--overlay", "--model", str(tiny_checkpoint)])
    assert code == 0
    for src in image_dir.iterdir():
        mask = cv2.imread(str(out / f"{src.stem}.png"), cv2.IMREAD_UNCHANGED)
        img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.dtype == np.uint8 and mask.ndim == 2
        assert mask.shape == img.shape[:2]
        assert mask.max() <= 4
        assert (out / "overlays" / f"{src.stem}.png").is_file()


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("empty.png", "file is empty"),
        ("garbage.png", "not a readable"),
        ("truncated.png", "corrupt or truncated PNG"),
        ("truncated.jpg", "truncated JPEG"),
        ("notes.gif", "unsupported format '.gif'"),
        ("huge.png", "over the limit"),
    ],
)
def test_each_bad_file_gets_one_clear_line(
    bad_dir: Path, tmp_path: Path, tiny_checkpoint: Path, name: str, words: str
) -> None:
    r = run_cli(
        "segment", str(bad_dir / name), str(bad_dir / "fine.png"), "--out", str(tmp_path),
        "--model", str(tiny_checkpoint), "--engine", "torch", "--max-pixels", "100000",
    )  # fmt: skip
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert name in lines[0] and words in lines[0]
    assert (tmp_path / "fine.png").is_file()  # the rest of the batch still processed
    assert not (tmp_path / f"{Path(name).stem}.png").exists()


def test_whole_bad_batch_reports_every_file_and_processes_the_good(
    bad_dir: Path, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    r = run_cli(
        "segment", str(bad_dir), str(empty), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"),
        "--model", str(tiny_checkpoint), "--engine", "torch", "--max-pixels", "100000",
    )  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = r.stderr.splitlines()
    assert len(err) == 7  # 5 bad images (a folder's .gif is not an image: skipped), 1 empty folder, 1 missing path
    assert any("directory has no images" in ln for ln in err)
    assert any("no such file or directory" in ln for ln in err)
    assert (tmp_path / "o" / "fine.png").is_file()


def test_missing_model_is_one_line(tmp_path: Path, image_dir: Path) -> None:
    r = run_cli("segment", str(image_dir / "gray8.png"), "--out", str(tmp_path), "--model", str(tmp_path / "x.pt"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "model file not found" in r.stderr and str(tmp_path / "x.pt") in r.stderr


def test_corrupt_model_is_one_line(tmp_path: Path, image_dir: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run_cli(
        "segment", str(image_dir / "gray8.png"), "--out", str(tmp_path), "--model", str(bad), "--engine", "torch"
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "not a LayerWatch model checkpoint" in r.stderr


def test_synth_and_evaluate_round_trip(tmp_path: Path, tiny_checkpoint: Path) -> None:
    assert main(["synth", "--out", str(tmp_path / "ds"), "--count", "3", "--size", "128", "--seed", "5"]) == 0
    assert len(list((tmp_path / "ds" / "images").glob("*.png"))) == 3
    js = tmp_path / "r.json"
    code = main(
        ["evaluate", "--images", str(tmp_path / "ds" / "images"), "--masks", str(tmp_path / "ds" / "masks"),
         "--json", str(js), "--model", str(tiny_checkpoint), "--engine", "torch"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(js.read_text())
    assert report["frames"] == 3
    assert set(report["classes"]) == {"powder", "part", "porosity", "spatter", "warping"}
    assert np.array(report["confusion"]).sum() == 3 * 128 * 128


def test_evaluate_without_matching_masks_fails_clearly(tmp_path: Path, tiny_checkpoint: Path) -> None:
    (tmp_path / "masks").mkdir()
    write_layer_image(tmp_path / "img" / "a.png", np.zeros((40, 40), np.uint8))
    r = run_cli(
        "evaluate", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "masks"),
        "--model", str(tiny_checkpoint), "--engine", "torch",
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "has a matching mask" in r.stderr


def test_synth_build_writes_consecutive_layers(tmp_path: Path) -> None:
    assert main(["synth", "--build", "--layers", "4", "--size", "96", "--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "b" / "images").iterdir())
    assert names == [f"layer_{k:05d}.png" for k in range(4)]
    spec = json.loads((tmp_path / "b" / "build.json").read_text())
    assert spec["spec"]["n_layers"] == 4


def test_bad_arguments_exit_2_without_traceback(tmp_path: Path) -> None:
    r = run_cli("segment", "x.png", "--out", str(tmp_path), "--engine", "tensorrt")
    assert r.returncode == 2 and "invalid choice: 'tensorrt'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", "--out", str(tmp_path), "--arch", "unet-huge")
    assert r.returncode == 2 and "unet-huge" in r.stderr and "Traceback" not in r.stderr
    # one line, naming the argument and where the usage is (not the usage itself)
    for args, words in (
        (("replay", "b.h5", "--reference-layers", "99"), "argument --reference-layers: 99 layers: use 0 (off) to 50"),
        (("replay",), "the following arguments are required: record"),
        (("nosuch",), "invalid choice: 'nosuch'"),
    ):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
        assert r.stderr.rstrip().endswith("--help)")


def _one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[monitor]\nout_dir = "r"\nengin = "onnx"\n', ("[monitor] has no key 'engin'", "allowed keys:")),
        ("[monitor]\nmm_per_px = -1\n", ("[monitor] mm_per_px = -1", "greater than 0")),
        ('[printers.p1]\nbackend = "prusalink"\n', ("[printers.p1] backend = 'prusalink'", "octoprint")),
        ('[[policy.rules]]\nname = "x"\nmetric = "pores"\nabove = 1\n', ("metric 'pores' does not exist",)),
        ('[printers."p 1"]\n', ("printer id 'p 1' is not usable",)),
        ('[policy]\nfile = "nope.toml"\n', ("policy file", "does not exist")),
    ],
)
def test_monitor_refuses_a_bad_config_in_one_line(tmp_path: Path, toml: str, words: tuple[str, ...]) -> None:
    cfg = tmp_path / "lw.toml"
    cfg.write_text(toml)
    _one_line(run_cli("monitor", "--config", str(cfg)), EXIT_CONFIG, str(cfg), *words)  # no restart can fix it


def test_monitor_without_a_printer_says_how_to_name_one() -> None:
    _one_line(run_cli("monitor"), 2, "no printer to monitor", "--printer ID")


def test_record_commands_on_files_that_are_not_records(tmp_path: Path) -> None:
    _one_line(run_cli("record", "info", str(tmp_path / "missing.h5")), 2, "does not exist")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"junk")
    _one_line(run_cli("record", "info", str(bad)), 2, "cannot open build record")
    _one_line(run_cli("record", "check", str(bad)), 1, "cannot open build record")


def test_the_shipped_example_config_loads() -> None:
    from monitor.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[3] / "data" / "config" / "layerwatch.toml")
    assert "printer-1" in cfg.printers and cfg.resolved_policy().rules


def test_dashboard_mistakes_get_one_line(tmp_path: Path) -> None:
    import socket

    bad_port = run_cli("dashboard", "--records", str(tmp_path), "--port", "99999")
    assert bad_port.returncode == 2 and "99999 is not a port number" in bad_port.stderr
    assert "Traceback" not in bad_port.stderr
    _one_line(run_cli("dashboard", "--records", str(tmp_path / "nope")), 2, "records folder", "does not exist")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        _one_line(run_cli("dashboard", "--records", str(tmp_path), "--port", port), 2, "cannot listen on", port)


def test_a_bad_operators_file_stops_the_monitor_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "operators").write_text("ana:too-short\n")
    (tmp_path / "operators").chmod(0o600)
    config = tmp_path / "c.toml"
    config.write_text('[security]\noperators_file = "operators"\n[printers.p1]\nbackend = "none"\n')
    _one_line(
        run_cli("monitor", "--config", str(config)), EXIT_CONFIG, "operators:1: the secret of 'ana' has 9 characters"
    )


def test_bridge_takes_the_printer_from_the_config_or_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[printers.p1]\nbackend = "none"\n')
    assert main(["bridge", "--printer", "p2", "--config", str(config)]) == 2
    assert "give --backend, or --config with a [printers.p2] table naming its backend" in capsys.readouterr().err
    assert main(["bridge", "--printer", "p1", "--config", str(config)]) == 2  # observed only: no host to ask
    assert "[printers.p1]" in capsys.readouterr().err
