"""The OctoPrint plugin's layer detection and its side of the MQTT contract, checked against LayerWatch's own
schemas: what it publishes, the monitor reads as it reads the bridge's and the camera node's messages."""

from __future__ import annotations

import base64
import json
import re

import cv2
import numpy as np
import pytest
from gcode import make_gcode
from octoprint_layerwatch.contract import (
    ContractError,
    Topics,
    action_view,
    end_event,
    event_message,
    frame_envelope,
    image_header,
    layer_event,
    result_view,
    split_envelope,
    status_message,
)
from octoprint_layerwatch.layers import LayerChange, LayerMarker, LayerTracker, parse_command
from octoprint_layerwatch.link import parse_broker

from printer_io.frames import decode_image
from printer_io.messages import (
    ActionMessage,
    EventMessage,
    FrameMeta,
    LayerEvent,
    ResultMessage,
    RuleHitInfo,
    StatusMessage,
    encode_frame,
    split_frame,
)
from segmentation.imageio import class_overlay_png

_GCODE = re.compile(r"^([GM]\d+)")


def mark(data: bytes) -> bytes:
    marker = LayerMarker()
    return b"".join(marker.line(line) for line in data.splitlines(keepends=True))


def send(data: bytes, tracker: LayerTracker) -> None:
    """The file as OctoPrint sends it: comments stripped, ``@`` commands to the plugins, the rest to the printer."""
    for raw in data.decode().splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("@layerwatch"):
            tracker.markers = True
            tracker.on_command(parse_command(line[len("@layerwatch") :]))
        else:
            m = _GCODE.match(line)
            tracker.on_gcode(m.group(1) if m else None, line)


def layers_of(data: bytes) -> list[LayerChange]:
    done: list[LayerChange] = []
    tracker = LayerTracker(done.append, markers=False)
    tracker.start_job()
    send(data, tracker)
    tracker.finish()
    return done


@pytest.mark.parametrize("slicer", ["cura", "prusa"])
def test_uploads_are_marked_at_the_slicers_layer_markers_once(slicer: str) -> None:
    marked = mark(make_gcode(6, markers=slicer))
    assert re.findall(rb"@layerwatch layer (\d+)", marked) == [str(n).encode() for n in range(6)]
    assert mark(marked) == marked  # uploading a marked file again marks nothing twice
    assert (
        mark(b";LAYER:-2\n;LAYER:-1\nG1 Z1\n;LAYER:0")
        == b";LAYER:-2\n;LAYER:-1\nG1 Z1\n;LAYER:0\n@layerwatch layer 0\n"
    )


@pytest.mark.parametrize("slicer", ["cura", "prusa", None])
def test_every_layer_is_done_once_at_its_height_with_or_without_markers_and_z_hops(slicer: str | None) -> None:
    data = make_gcode(8, markers=slicer, hop=0.4)
    data = mark(data) if slicer else data
    done = layers_of(data)
    assert [(c.layer, c.z_mm) for c in done] == [(n, round(0.2 * (n + 1), 3)) for n in range(8)]


def test_a_purge_line_above_the_first_layer_and_relative_moves_do_not_make_layers() -> None:
    data = b"G28\nG90\nM82\nG92 E0\nG1 Z0.6 F300\nG1 X50 E5\nG1 Z0.2\nG1 X0 E6\nG1 E5\nG1 Z0.6\nG1 Z0.2\nG1 X9 E7\n"
    data += b"G91\nG1 Z0.2\nG1 X-5 E1\nG90\nG1 Z5\nG1 E-2\nG1 X0 Y0\n"  # a retraction and a travel up: no layer
    assert [(c.layer, c.z_mm) for c in layers_of(data)] == [(0, 0.2), (1, 0.4)]


def test_the_host_command_counts_layers_without_numbers_and_refuses_other_text() -> None:
    done: list[LayerChange] = []
    tracker = LayerTracker(done.append, markers=True)
    for z in (0.3, 0.6, 0.9):
        tracker.on_command(None)
        tracker.on_gcode("G1", f"G1 Z{z}")
        tracker.on_gcode("G1", "G1 X10 E1")
    tracker.finish()
    assert [(c.layer, c.z_mm) for c in done] == [(0, 0.3), (1, 0.6), (2, 0.9)]
    assert parse_command(" layer 12 ") == 12 and parse_command("") is None
    for bad in ("pause", "layer -1", "layer 1e9", "layer 99999999", "layer 1 2"):
        with pytest.raises(ValueError, match="expected '@layerwatch' or '@layerwatch layer N'"):
            parse_command(bad)


def test_layer_and_end_events_are_what_the_monitor_reads_from_the_bridge() -> None:
    event = LayerEvent.from_json(layer_event("p1", "cube.gcode-1700000000", 3, 0.8), "layerwatch/p1/layer")
    assert (event.printer, event.job_id, event.layer, event.z_mm, event.source, event.end) == (
        "p1", "cube.gcode-1700000000", 3, 0.8, "octoprint", False,
    )  # fmt: skip
    end = LayerEvent.from_json(end_event("p1", "cube.gcode-1700000000", 7, 1.6, "cancelled"))
    assert end.end and end.outcome == "cancelled" and end.layer == 7
    with pytest.raises(ContractError):
        end_event("p1", "j", 1, 0.2, "exploded")
    assert EventMessage.from_json(event_message("p1", "warning", "capture_failed", "x" * 9000)).service == "octoprint"
    assert StatusMessage.from_json(status_message("c1", "online", "0.1.0")).state == "online"


@pytest.mark.parametrize(
    ("ext", "image", "channels", "depth"),
    [
        (".jpg", np.full((48, 64, 3), 90, np.uint8), 3, 8),
        (".jpg", np.full((48, 64), 90, np.uint8), 1, 8),
        (".png", np.full((48, 64), 90, np.uint8), 1, 8),
        (".png", np.full((48, 64), 9000, np.uint16), 1, 16),
        (".png", np.full((48, 64, 3), 90, np.uint8), 3, 8),
        (".png", np.full((48, 64, 4), 90, np.uint8), 3, 8),
    ],
)
def test_a_snapshot_travels_in_the_camera_nodes_envelope(
    ext: str, image: np.ndarray, channels: int, depth: int
) -> None:
    ok, data = cv2.imencode(ext, image)
    assert ok
    payload = frame_envelope("p1", "job-1", 4, 1.0, bytes(data), captured_at=1700000000.5)
    meta, encoded, parts = split_frame(payload, "layerwatch/p1/image")
    assert (meta.width, meta.height, meta.channels, meta.bit_depth, meta.layer) == (64, 48, channels, depth, 4)
    assert meta.source == "octoprint-webcam" and parts == b""
    decoded = decode_image(encoded, "layerwatch/p1/image", expect=(meta.width, meta.height))
    assert decoded.shape[:2] == (48, 64)


def test_what_is_not_a_jpeg_or_png_is_not_published() -> None:
    for data in (b"", b"GIF89a....", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, b"<html>"):
        with pytest.raises(ContractError):
            image_header(data)
    with pytest.raises(ContractError, match="more than"):
        frame_envelope("p1", "j", 0, 0.2, b"\xff\xd8" + b"\0" * (16 * 1024 * 1024), captured_at=0)


def _result(**changes: object) -> bytes:
    mask = np.zeros((100, 100), np.uint8)
    mask[20:80, 20:80] = 1
    mask[40:50, 40:50] = 4
    res = ResultMessage(
        printer="p1", job_id="j", layer=6, z_mm=1.4, severity="critical",  # type: ignore[arg-type]
        metrics={"warping_confirmed_area_mm2": 2.5, "porosity_fraction_part": 0.01},
        hits=[RuleHitInfo(rule="warping-persists", severity="critical", value=2.5, threshold=1.0,  # type: ignore[arg-type]
                          description="more than 1 mm² of confirmed warping")],
        overlay=base64.b64encode(class_overlay_png(mask)).decode(),
    )  # fmt: skip
    data = json.loads(res.to_json())
    data.update(changes)
    return json.dumps(data).encode()


def test_the_tab_shows_the_monitors_result_and_nothing_else_of_it() -> None:
    view = result_view(_result(), "p1")
    assert (
        view["layer"] == 6 and view["severity"] == "critical" and view["metrics"]["warping_confirmed_area_mm2"] == 2.5
    )
    assert view["hits"][0]["rule"] == "warping-persists"
    png = view["overlay"]
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).shape == (100, 100, 4)
    assert result_view(_result(overlay='javascript:alert(1)"'), "p1")["overlay"] == b""
    assert result_view(_result(severity="<b>bad</b>", model="m" * 5000), "p1")["severity"] == ""
    assert len(result_view(_result(model="m" * 5000), "p1")["model"]) == 128
    for bad, why in (
        (_result(printer="p2"), "on 'p1'"),
        (_result(layer=-1), "integer"),
        (b"[" * 100_000, "not JSON"),
        (b'{"schema": "layerwatch.action/1"}', "not a layerwatch.result"),
        (b" " * 600_000, "bytes: more than"),
    ):
        with pytest.raises(ContractError, match=re.escape(why)):
            result_view(bad, "p1")


def test_the_tab_shows_an_action_with_its_reason_and_evidence() -> None:
    msg = ActionMessage(
        printer="p1", action="pause", state="confirmed", request_id="r1", job_id="j", layer=6,  # type: ignore[arg-type]
        reason="more than 1 mm² of confirmed warping", rule="warping-persists", severity="critical",  # type: ignore[arg-type]
        metrics={"warping_confirmed_area_mm2": 2.5},
    )  # fmt: skip
    view = action_view(msg.to_json(), "p1")
    assert (view["action"], view["state"], view["layer"], view["rule"]) == ("pause", "confirmed", 6, "warping-persists")
    assert view["reason"].startswith("more than 1 mm²") and view["metrics"] == {"warping_confirmed_area_mm2": 2.5}
    with pytest.raises(ContractError):
        action_view(msg.to_json(), "p2")


def test_broker_urls_and_topics_are_checked() -> None:
    assert parse_broker("mqtt://10.0.0.5") == ("10.0.0.5", 1883, False)
    assert parse_broker("mqtts://broker.example:8884") == ("broker.example", 8884, True)
    for bad, why in (
        ("http://x", "expected mqtt://"),
        ("mqtt://user:pw@host", "password settings"),
        ("mqtt://host:99999", "port"),
        ("mqtt://", "no host"),
    ):
        with pytest.raises(ContractError, match=why):
            parse_broker(bad)
    assert Topics("layerwatch", "p1").status == "layerwatch/p1/status/octoprint"
    for prefix, printer in (("layer/+", "p1"), ("layerwatch", "p#"), ("layerwatch", "")):
        with pytest.raises(ContractError):
            Topics(prefix, printer)


def test_the_camera_nodes_frames_are_read_for_the_tab_where_the_plugin_does_not_capture() -> None:
    ok, png = cv2.imencode(".png", np.full((40, 50), 77, np.uint8))
    ok2, ids = cv2.imencode(".png", np.zeros((40, 50), np.uint16))
    assert ok and ok2
    meta = FrameMeta(printer="p1", job_id="j", layer=2, z_mm=0.6, captured_at=1.0, encoding="png", width=50,
                     height=40, channels=1, bit_depth=8, source="opencv")  # fmt: skip
    header, image = split_envelope(encode_frame(meta, bytes(png), bytes(ids)))
    assert (header["job_id"], header["layer"]) == ("j", 2) and image == bytes(png)  # the part ids left out
    for bad in (b"LWF1\x00\x00\x00\x05{}", b"JPEG" + bytes(png), encode_frame(meta, b"not an image")):
        with pytest.raises(ContractError):
            split_envelope(bad)
