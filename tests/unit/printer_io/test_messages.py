"""Topic tree, payload schemas and the frame envelope: what is accepted and how refusals read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from printer_io.errors import ConfigError, PayloadError
from printer_io.frames import decode_image, encode_image
from printer_io.messages import (
    ActionMessage,
    ActionState,
    FrameMeta,
    FrameQuality,
    LayerEvent,
    StatusMessage,
    decode_frame,
    encode_frame,
)
from printer_io.topics import Kind, Topics


def test_topics_are_built_in_one_place() -> None:
    t = Topics("layerwatch", "farm-3.p1")
    assert t.layer == "layerwatch/farm-3.p1/layer"
    assert t.image == "layerwatch/farm-3.p1/image"
    assert t.status("camera") == "layerwatch/farm-3.p1/status/camera"
    assert t.topic(Kind.RESULT) == "layerwatch/farm-3.p1/result"


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "with space", "x" * 65])
def test_printer_ids_that_would_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="not usable in an MQTT topic"):
        Topics("layerwatch", bad)


def test_layer_event_round_trip_carries_its_schema() -> None:
    event = LayerEvent(printer="p1", job_id="job-1", layer=3, z_mm=0.8, time=1.5, source="virtual")
    raw = json.loads(event.to_json())
    assert raw["schema"] == "layerwatch.layer/1"
    assert LayerEvent.from_json(event.to_json()) == event


def _layer(**changes: object) -> bytes:
    base: dict[str, object] = {"schema": "layerwatch.layer/1", "printer": "p1", "job_id": "j", "layer": 2, "z_mm": 0.6}
    base.update(changes)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("payload", "reason", "words"),
    [
        (b"{not json", "json", "not JSON"),
        (b"[1, 2]", "schema", "expected a layerwatch.layer/1 object"),
        (_layer(schema="layerwatch.layer/2"), "version", "'layerwatch.layer/2', expected 'layerwatch.layer/1'"),
        (_layer(schema="layerwatch.frame/1"), "schema", "expected 'layerwatch.layer/1'"),
        (_layer(layer=-1), "field", "field 'layer'"),
        (_layer(layer="three"), "field", "field 'layer'"),
        (_layer(z_mm=None), "field", "field 'z_mm'"),
        (_layer(colour="red"), "field", "field 'colour'"),
        (b"\xff\xfe", "json", "not JSON"),
    ],
)
def test_bad_layer_payloads_name_field_and_reason(payload: bytes, reason: str, words: str) -> None:
    with pytest.raises(PayloadError) as info:
        LayerEvent.from_json(payload, "layerwatch/p1/layer")
    assert info.value.reason == reason
    assert words in str(info.value)
    assert str(info.value).startswith("layerwatch/p1/layer: ")


def _meta(**kw: object) -> FrameMeta:
    fields: dict[str, object] = dict(
        printer="p1", job_id="j", layer=4, z_mm=1.0, captured_at=2.0, encoding="png", width=32, height=16,
        channels=1, bit_depth=16, quality=FrameQuality(sharpness=12.0, mean=0.4),
    )  # fmt: skip
    fields.update(kw)
    return FrameMeta.model_validate(fields)


def test_frame_envelope_round_trip_keeps_16_bit_pixels() -> None:
    image = (np.arange(16 * 32, dtype=np.uint16).reshape(16, 32) * 97).astype(np.uint16)
    payload = encode_frame(_meta(), encode_image(image, "png"))
    meta, data = decode_frame(payload, "t")
    assert meta.layer == 4 and meta.quality is not None and meta.quality.ok
    back = decode_image(data)
    assert back.dtype == np.uint16 and np.array_equal(back, image)


def test_jpeg_frames_are_8_bit() -> None:
    image = np.full((16, 32), 40000, dtype=np.uint16)
    back = decode_image(encode_image(image, "jpeg"))
    assert back.dtype == np.uint8 and abs(int(back.mean()) - 40000 // 256) <= 2


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "not a LayerWatch frame"),
        (b"PNG....", "not a LayerWatch frame"),
        (b"LWF1\x00\x10\x00\x00{}", "does not fit"),
        (b"LWF1\x00\x00\x00\x02{}", "field 'schema'"),
    ],
)
def test_bad_envelopes_are_refused(payload: bytes, words: str) -> None:
    with pytest.raises(PayloadError, match=words):
        decode_frame(payload, "layerwatch/p1/image")


def test_envelope_without_image_bytes_is_refused() -> None:
    with pytest.raises(PayloadError, match="carries no image bytes"):
        decode_frame(encode_frame(_meta(), b""))


def test_undecodable_image_bytes_are_a_payload_error() -> None:
    with pytest.raises(PayloadError) as info:
        decode_image(b"\x89PNG\r\n\x1a\n garbage")
    assert info.value.reason == "image"


def test_other_schemas_validate_their_enums() -> None:
    action = ActionMessage(printer="p1", action="pause", state=ActionState.REQUESTED, request_id="r1", reason="x")
    assert ActionMessage.from_json(action.to_json()).state == ActionState.REQUESTED
    with pytest.raises(PayloadError, match="field 'state'"):
        ActionMessage.from_dict({**json.loads(action.to_json()), "state": "maybe"})
    status = StatusMessage(service="camera", client_id="c", state="online")
    assert StatusMessage.from_json(status.to_json()).state == "online"


def test_a_status_of_the_earlier_version_is_read_and_one_of_a_later_is_refused() -> None:
    old = {"schema": "layerwatch.status/1", "service": "monitor", "client_id": "c", "state": "offline", "time": 1.0}
    status = StatusMessage.from_dict(old)  # retained by a service of the earlier version
    assert status.state == "offline" and status.worker == "" and status.hops == 0
    with pytest.raises(PayloadError, match=r"expected 'layerwatch\.status/3'") as err:
        StatusMessage.from_dict({**old, "schema": "layerwatch.status/4"})
    assert err.value.reason == "version"
    with pytest.raises(PayloadError, match="field 'worker'"):
        StatusMessage.from_dict({**old, "worker": 5})  # the earlier version's name does not admit a wrong field


def test_frames_can_carry_part_ids() -> None:
    from printer_io.messages import split_frame

    image = np.zeros((4, 8), np.uint8)
    ids = np.zeros((4, 8), np.uint16)
    ids[1:3, 2:6] = 300
    payload = encode_frame(_meta(bit_depth=8), encode_image(image), encode_image(ids))
    meta, img, parts = split_frame(payload)
    assert meta.part_ids_bytes == len(parts) > 0
    assert np.array_equal(decode_image(parts), ids) and decode_image(img).shape == (4, 8)
    _, img_only = decode_frame(payload)
    assert img_only == img
    bad = encode_frame(_meta(bit_depth=8), b"x")
    header_len = int.from_bytes(bad[4:8], "big")
    forged = bad[:8] + bad[8 : 8 + header_len].replace(b'"part_ids_bytes":0', b'"part_ids_bytes":99') + b"x"
    forged = forged[:4] + len(forged[8:-1]).to_bytes(4, "big") + forged[8:]
    with pytest.raises(PayloadError, match="says 99 bytes of part ids"):
        split_frame(forged)
