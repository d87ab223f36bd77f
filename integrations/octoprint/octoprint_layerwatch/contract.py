"""LayerWatch's MQTT contract, as far as this plugin speaks it (LayerWatch's docs/mqtt.md).

The plugin publishes what LayerWatch's printer bridge and camera node publish, byte for byte the same schemas, so
the monitor cannot tell them apart:

- ``<prefix>/<printer>/layer``: ``layerwatch.layer/1``, layer N of a job is complete (or the job ended);
- ``<prefix>/<printer>/image``: the frame envelope ``b"LWF1"`` + 4-byte big-endian header length + the
  ``layerwatch.frame/2`` JSON header + the encoded image (JPEG or PNG, as the webcam gave it);
- ``<prefix>/<printer>/event``: ``layerwatch.event/1``, something the operator should know (a capture failed);
- ``<prefix>/<printer>/status/octoprint``: ``layerwatch.status/3``, retained, with a last will.

It reads the monitor's results and actions of its own printer, and keeps of them only the fields it shows, each
checked for type and bounded in length: what arrives from the network is data to show, never a command.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import time
from typing import Any

__all__ = [
    "MAX_ACTION_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_RESULT_BYTES",
    "ContractError",
    "Topics",
    "action_view",
    "end_event",
    "event_message",
    "frame_envelope",
    "image_header",
    "image_type",
    "layer_event",
    "result_view",
    "status_message",
    "validate_id",
]

MAX_FRAME_BYTES = 16 * 1024 * 1024  # LayerWatch's default [mqtt] max_frame_bytes and its broker's limit
MAX_RESULT_BYTES = 512 * 1024
MAX_ACTION_BYTES = 64 * 1024
MAGIC = b"LWF1"
SOURCE = "octoprint"  # the source LayerWatch's own bridge names for OctoPrint
SERVICE = "octoprint"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_B64_PNG = re.compile(r"^iVBORw0KGgo[A-Za-z0-9+/]*={0,2}$")  # base64 of a PNG: its signature, then base64 only


class ContractError(ValueError):
    """A setting or a message that does not fit the contract; the message says which and what is expected."""


def validate_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ContractError(f"{what} {value!r} is not usable in an MQTT topic: use 1-64 letters, digits, '_', '.', '-'")
    return value


class Topics:
    def __init__(self, prefix: str, printer: str) -> None:
        for level in prefix.split("/"):
            validate_id(level, "prefix level")
        self.prefix, self.printer = prefix, validate_id(printer, "printer id")
        base = f"{prefix}/{printer}"
        self.layer, self.image, self.event = f"{base}/layer", f"{base}/image", f"{base}/event"
        self.result, self.action = f"{base}/result", f"{base}/action"
        self.status = f"{base}/status/{SERVICE}"


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def layer_event(printer: str, job_id: str, layer: int, z_mm: float, now: float | None = None) -> bytes:
    return _json(
        {
            "schema": "layerwatch.layer/1",
            "printer": printer,
            "job_id": job_id[:256],
            "layer": int(layer),
            "z_mm": float(z_mm),
            "time": time.time() if now is None else now,
            "source": SOURCE,
            "end": False,
            "outcome": "",
        }
    )


def end_event(printer: str, job_id: str, layer: int, z_mm: float, outcome: str) -> bytes:
    """The job ended (``outcome``: done, cancelled, failed) after layer ``layer``: the monitor closes its record."""
    if outcome not in ("done", "cancelled", "failed"):
        raise ContractError(f"outcome {outcome!r}: expected done, cancelled or failed")
    data = json.loads(layer_event(printer, job_id, max(layer, 0), z_mm))
    data.update(end=True, outcome=outcome)
    return _json(data)


def event_message(
    printer: str, level: str, code: str, message: str, job_id: str = "", layer: int | None = None
) -> bytes:
    return _json(
        {
            "schema": "layerwatch.event/1",
            "printer": printer,
            "service": SERVICE,
            "level": level,
            "code": code,
            "message": message[:4000],
            "job_id": job_id[:256],
            "layer": layer,
            "time": time.time(),
        }
    )


def status_message(client_id: str, state: str, version: str, problem: str = "") -> bytes:
    return _json(
        {
            "schema": "layerwatch.status/3",
            "service": SERVICE,
            "client_id": client_id,
            "state": state,
            "problem": problem[:500],
            "time": time.time(),
            "version": version,
            "worker": "",
            "hops": 0,
        }
    )


def image_header(data: bytes) -> tuple[str, int, int, int, int]:
    """(encoding, width, height, channels, bit depth) of a JPEG or PNG from its header, without decoding it."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 33 and data[12:16] == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        # gray and gray+alpha decode to one channel; RGB, palette and RGBA to three (the alpha is dropped)
        channels = {0: 1, 4: 1, 2: 3, 3: 3, 6: 3}.get(colour)
        if channels is None or depth not in (1, 2, 4, 8, 16) or not width or not height:
            raise ContractError(f"PNG of colour type {colour} and depth {depth}: not an image LayerWatch reads")
        return "png", width, height, channels, 16 if depth == 16 else 8
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                raise ContractError("JPEG without a frame header (a marker was expected)")
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                if i + 10 > len(data):
                    break
                depth, height, width, components = struct.unpack(">BHHB", data[i + 4 : i + 10])
                if components not in (1, 3) or not width or not height:
                    raise ContractError(f"JPEG with {components} components: LayerWatch reads gray or colour JPEGs")
                return "jpeg", width, height, components, 8
            i += 2 + length
        raise ContractError("JPEG without a frame header within its bytes")
    raise ContractError("the snapshot is neither a JPEG nor a PNG")


def frame_envelope(
    printer: str, job_id: str, layer: int, z_mm: float, image: bytes, *, captured_at: float, attempt: int = 1
) -> bytes:
    if len(image) > MAX_FRAME_BYTES:
        raise ContractError(f"snapshot of {len(image)} bytes: more than the {MAX_FRAME_BYTES} a frame may have")
    encoding, width, height, channels, depth = image_header(image)
    if encoding == "jpeg":
        depth = 8
    header = _json(
        {
            "schema": "layerwatch.frame/2",
            "printer": printer,
            "job_id": job_id[:256],
            "layer": int(layer),
            "z_mm": float(z_mm),
            "captured_at": captured_at,
            "encoding": encoding,
            "width": width,
            "height": height,
            "channels": channels,
            "bit_depth": depth,
            "source": "octoprint-webcam",
            "attempt": attempt,
            "quality": None,
            "part_ids_bytes": 0,
            "view": "melt",
            "mm_per_px": None,
        }
    )
    return MAGIC + struct.pack(">I", len(header)) + header + image


def split_envelope(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and the image bytes of a frame from the camera node (shown in the tab where capture is off)."""
    if len(payload) > MAX_FRAME_BYTES + 65536 or payload[:4] != MAGIC or len(payload) < 8:
        raise ContractError("not a LayerWatch frame envelope, or larger than a frame may be")
    (n,) = struct.unpack(">I", payload[4:8])
    if n > 65536 or 8 + n >= len(payload):
        raise ContractError("frame header length does not fit the payload")
    header = _load(payload[8 : 8 + n], "layerwatch.frame/")
    body = payload[8 + n :]
    cut = len(body) - _int(header.get("part_ids_bytes"), 0, len(body) - 1)
    image = body[:cut]
    image_header(image)
    return header, image


# ---- what the plugin reads: only the fields it shows, checked and bounded ------------------------------------
def _load(payload: bytes, schema: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ContractError(f"not JSON ({str(err)[:80]})") from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith(schema):
        raise ContractError(f"not a {schema} message")
    return data


def _message(payload: bytes, kind: str, limit: int, printer: str) -> dict[str, Any]:
    """A ``layerwatch.<kind>`` message of ``printer``, of at most ``limit`` bytes, as a dict (not yet checked)."""
    if len(payload) > limit:
        raise ContractError(f"{kind} of {len(payload)} bytes: more than {limit}")
    data = _load(payload, f"layerwatch.{kind}/")
    if data.get("printer") != printer:
        raise ContractError(f"{kind} of printer {str(data.get('printer'))[:64]!r} on {printer!r}'s topic")
    return data


def _str(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _int(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ContractError(f"{value!r} is not an integer in {low}..{high}")
    return value


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def _numbers(values: Any, limit: int = 64) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    out: dict[str, float] = {}
    for k, v in list(values.items())[:limit]:
        n = _num(v)
        if isinstance(k, str) and len(k) <= 64 and n is not None:
            out[k] = n
    return out


def result_view(payload: bytes, printer: str) -> dict[str, Any]:
    """A ``layerwatch.result`` message of ``printer`` as the tab shows it."""
    data = _message(payload, "result", MAX_RESULT_BYTES, printer)
    overlay = data.get("overlay", "")
    hits = data["hits"] if isinstance(data.get("hits"), list) else []
    return {
        "job": _str(data.get("job_id"), 256),
        "layer": _int(data.get("layer"), 0, 1_000_000),
        "z_mm": _num(data.get("z_mm")),
        "judged": data.get("judged") is not False,
        "severity": _severity(data.get("severity")),
        "metrics": _numbers(data.get("metrics")),
        "hits": [
            {
                "rule": _str(h.get("rule"), 64),
                "severity": _severity(h.get("severity")),
                "description": _str(h.get("description"), 300),
            }
            for h in hits[:16]
            if isinstance(h, dict)
        ],
        "model": _str(data.get("model"), 128),
        "time": _num(data.get("published_at")) or time.time(),
        "overlay": _png(overlay),
    }


def action_view(payload: bytes, printer: str) -> dict[str, Any]:
    """A ``layerwatch.action`` message of ``printer``: what was asked or done to it, why, and on what evidence."""
    data = _message(payload, "action", MAX_ACTION_BYTES, printer)
    layer = data.get("layer")
    return {
        "action": _str(data.get("action"), 32),
        "state": _str(data.get("state"), 32),
        "request_id": _str(data.get("request_id"), 128),
        "job": _str(data.get("job_id"), 256),
        "layer": layer if isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer <= 1_000_000 else None,
        "reason": _str(data.get("reason"), 2000),
        "detail": _str(data.get("detail"), 2000),
        "rule": _str(data.get("rule"), 64),
        "incident": _str(data.get("incident"), 128),
        "severity": _severity(data.get("severity")),
        "metrics": _numbers(data.get("metrics")),
        "operator": _str(data.get("operator"), 64),
        "model": _str(data.get("model"), 128),
        "time": _num(data.get("time")) or time.time(),
    }


def _severity(value: Any) -> str:
    return value if value in ("ok", "info", "warning", "critical") else ""


def _png(encoded: Any) -> bytes:
    """The PNG a result carries (base64), decoded; empty where it is none."""
    if not isinstance(encoded, str) or not _B64_PNG.match(encoded):
        return b""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return b""


def image_type(image: bytes) -> str:
    """The MIME type of a JPEG or PNG the plugin keeps, from its first bytes ("" for anything else)."""
    return "image/png" if image[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg" if image[:2] == b"\xff\xd8" else ""
