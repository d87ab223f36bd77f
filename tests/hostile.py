"""Crafted inputs an attacker on the network could send (docs/security.md), shared by unit and integration tests."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """docs/security.md F6: a PNG that declares 20000x20000 16-bit colour (2.4 GB decoded) in about 1 kB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    idat = zlib.compress(b"\0" * 1_000_000, 9)  # the start of its zero rows
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def malformed_messages(count: int, printer: str, job: str, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` (topic suffix, payload) pairs that are each wrong in one way a careless or hostile client gets
    wrong: random bytes, broken envelopes and JSON, fields out of range, images that are no images or lie about
    their size, unsigned control requests. Each must be refused, and none may disturb the build ``job`` of
    ``printer`` being monitored. (Well-formed messages of *another* job are docs/security.md F3/F5, not made here.)"""
    import json
    import random

    from printer_io.messages import FRAME_MAGIC

    rng = random.Random(seed)
    meta = {
        "schema": "layerwatch.frame/1", "printer": printer, "job_id": job, "layer": 0, "z_mm": 0.04,
        "captured_at": 1.0, "encoding": "png", "width": 64, "height": 64, "channels": 1, "bit_depth": 8,
    }  # fmt: skip

    def envelope(header: bytes, body: bytes) -> bytes:
        return FRAME_MAGIC + struct.pack(">I", len(header)) + header + body

    def frame(body: bytes, **change: object) -> bytes:
        return envelope(json.dumps({**meta, **change}).encode(), body)

    def event(**fields: object) -> bytes:
        return json.dumps({"schema": "layerwatch.layer/1", "printer": printer, "z_mm": 0.1, **fields}).encode()

    def action(kind: str, rid: str, **fields: object) -> bytes:
        body = {"schema": "layerwatch.action/1", "printer": printer, "action": kind, "state": "requested"}
        return json.dumps({**body, "request_id": rid, **fields}).encode()

    def junk(n: int) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(n))

    png_head = b"\x89PNG\r\n\x1a\n"
    makers = [
        lambda: ("image", junk(rng.randint(0, 600))),
        lambda: ("image", FRAME_MAGIC + struct.pack(">I", rng.randint(0, 2**32 - 1)) + junk(40)),
        lambda: ("image", envelope(junk(rng.randint(1, 80)), junk(50))),
        lambda: ("image", envelope(b'{"schema": "layerwatch.frame/1"}', junk(20))),
        lambda: ("image", frame(junk(rng.randint(1, 300)))),  # no image at all
        lambda: ("image", frame(png_head + junk(30))),  # a PNG cut after its signature
        lambda: ("image", frame(bomb_png(), width=20_000, height=20_000, channels=3, bit_depth=16)),
        lambda: ("image", frame(bomb_png(64, 64), width=32)),  # its header and its metadata disagree
        lambda: ("image", frame(b"\xff\xd8\xff\xc0\x00\x11\x08" + junk(40))),  # a JPEG cut in its frame header
        lambda: ("image", frame(junk(10), layer=-rng.randint(1, 9))),
        lambda: ("image", frame(junk(10), width=0)),
        lambda: ("image", frame(junk(10), printer="someone-else")),
        lambda: ("image", frame(junk(10), job_id="x" * 300)),
        lambda: ("image", frame(junk(10), encoding="gif")),
        lambda: ("image", frame(b"", part_ids_bytes=5)),
        lambda: ("image", frame(junk(10), part_ids_bytes=10**9)),
        lambda: ("image", envelope(b"[" * 5000 + b"]" * 5000, b"x")),  # deep JSON
        lambda: ("layer", junk(rng.randint(0, 300))),
        lambda: ("layer", b'{"schema": "layerwatch.layer/1", "printer": "' + printer.encode() + b'", "layer": 1e400}'),
        lambda: ("layer", event(job_id=job, layer=-1)),
        lambda: ("layer", event(job_id="", layer=1)),
        lambda: ("layer", event(job_id=job, layer=1, z_mm="high", outcome="exploded")),
        lambda: ("action", junk(rng.randint(0, 300))),
        lambda: ("action", action("pause", f"fuzz-{rng.getrandbits(32)}")),  # no operator, no signature
        lambda: ("action", action("resume", "r", operator="ana", signature="0" * 64)),
        lambda: ("action", action("feedback", "f", verdict="false_alarm", incident="x" * 5000)),
        lambda: ("action", action("gcode", "g", gcode=["M112"] * 1000)),
    ]  # fmt: skip
    for _ in range(count):
        yield rng.choice(makers)()


def crafted_records(base: Path, out: Path) -> dict[str, Path]:
    """Small files that are (or look like) build records but lie: shapes and sizes far beyond the file, wrong
    types, missing or garbled parts (docs/security.md F13). ``base``: a valid small record to start from."""
    import shutil

    import h5py
    import numpy as np

    made: dict[str, Path] = {}

    def variant(name: str, change: Callable[[h5py.File], object]) -> None:
        path = out / f"{name}.h5"
        shutil.copy(base, path)
        with h5py.File(path, "a") as f:
            change(f)
        made[name] = path

    def replace(f: h5py.File, name: str, **kwargs: object) -> None:
        del f[name]
        f.create_dataset(name, **kwargs)

    from monitor.record import images_path

    with h5py.File(base, "r") as f:
        images = images_path(f)  # Peregrine's path, or the one of an older record
    masks, lw = "slices/segmentation_results", "layerwatch"
    variant("huge-frames", lambda f: replace(f, images, shape=(4, 100_000, 100_000), dtype="u1", chunks=(1, 64, 64)))
    variant("huge-contiguous", lambda f: replace(f, images, shape=(2, 60_000, 60_000), dtype="u2"))
    variant("huge-mask", lambda f: replace(f, f"{masks}/2", shape=(2, 90_000, 90_000), dtype="u1", chunks=(1, 8, 8)))
    variant("float-mask", lambda f: replace(f, f"{masks}/1", data=np.zeros((2, 8, 8), "f8")))
    variant("4d-frames", lambda f: replace(f, images, data=np.zeros((2, 8, 8, 3), "u1")))
    variant("frames-a-group", lambda f: (f.__delitem__(images), f.create_group(images)))
    variant("mask-other-size", lambda f: replace(f, f"{masks}/1", data=np.zeros((2, 9, 7), "u1")))

    def rows(table: str, n: int) -> Callable[[h5py.File], None]:
        return lambda f: replace(f, f"{lw}/{table}", shape=(n,), dtype=f[f"{lw}/{table}"].dtype, chunks=(64,))

    variant("many-layers", rows("layers", 2_000_000_000))
    variant("many-events", rows("events", 3_000_000_000))
    variant("layers-no-stored", lambda f: replace(f, f"{lw}/layers", data=np.zeros(2, [("z_mm", "f4")])))
    variant("metrics-a-number", lambda f: replace(f, f"{lw}/metrics", data=np.float64(3.0)))
    variant("names-not-json", lambda f: f.attrs.__setitem__("layerwatch/metric_names", "[not json"))
    variant("class-names-number", lambda f: f.attrs.__setitem__("layerwatch/class_names", 7))
    variant("no-class-names", lambda f: f.attrs.__delitem__("layerwatch/class_names"))
    variant("schema-text", lambda f: f.attrs.__setitem__("layerwatch/schema_version", "two"))
    variant("roi-garbage", lambda f: f.attrs.__setitem__("layerwatch/roi", '{"points": 5}'))
    variant("state-missing", lambda f: f.__delitem__(f"{lw}/state"))
    variant("no-layerwatch-group", lambda f: f.__delitem__(lw))
    variant("dims-mm-text", lambda f: f.attrs.__setitem__("printer/x_real_dimension", "wide"))
    variant("camera-dim-zero", lambda f: f.attrs.__setitem__("printer/x_camera_dimension", 0))
    variant("stored-beyond-slices", lambda f: _stored_beyond(f, lw))
    variant("soft-link-loop", lambda f: _loop(f))
    # a 3.5 MB-class file declaring 400 frames of 8000x8000 (each slice exactly the per-slice limit)
    variant("declared-huge-stack", lambda f: _huge_stack(f, images, masks))
    return made


def outside_records(base: Path, out: Path, sentinel: Path) -> dict[str, Path]:
    """Records that point outside themselves (issue 31): an external link, external raw storage and a virtual
    dataset, each to ``sentinel`` (a file outside the records folder that no reader may open)."""
    import shutil

    import h5py
    import numpy as np

    from monitor.record import images_path

    with h5py.File(sentinel, "w") as s:
        s.create_dataset("frames", data=np.full((2, 8, 8), 7, np.uint8))
    raw = sentinel.with_suffix(".raw")
    raw.write_bytes(bytes([9]) * 128)
    with h5py.File(base, "r") as f:
        images = images_path(f)
    made: dict[str, Path] = {}

    def variant(name: str, change: Callable[[h5py.File], object]) -> None:
        path = out / f"{name}.h5"
        shutil.copy(base, path)
        with h5py.File(path, "a") as f:
            change(f)
        made[name] = path

    def external_link(f: h5py.File) -> None:
        del f[images]
        f[images] = h5py.ExternalLink(str(sentinel), "/frames")

    def external_storage(f: h5py.File) -> None:
        del f[images]
        f.create_dataset(images, shape=(2, 8, 8), dtype="u1", external=[(str(raw), 0, 128)])

    def virtual(f: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(2, 8, 8), dtype="u1")
        layout[:] = h5py.VirtualSource(str(sentinel), "frames", shape=(2, 8, 8))
        del f[images]
        f.create_virtual_dataset(images, layout)

    def linked_attribute_group(f: h5py.File) -> None:  # the link hides under a group of ours
        f["layerwatch/outside"] = h5py.ExternalLink(str(sentinel), "/")

    variant("external-link", external_link)
    variant("external-storage", external_storage)
    variant("virtual-dataset", virtual)
    variant("external-link-aside", linked_attribute_group)
    return made


def _stored_beyond(f: object, lw: str) -> None:
    import numpy as np

    table = f[f"{lw}/layers"]  # type: ignore[index]
    rows = np.array(table[:])
    more = np.zeros(6, rows.dtype)
    more["stored"] = True
    table.resize((len(rows) + 6,))
    table[len(rows) :] = more


def _loop(f: object) -> None:
    import h5py

    f["layerwatch/loop"] = h5py.SoftLink("/layerwatch/loop/inner")  # type: ignore[index]


def _huge_stack(f: object, images: str, masks: str) -> None:
    import h5py
    import numpy as np

    n, side = 400, 8000
    stacks: list[str] = []
    f["slices"].visititems(  # type: ignore[index]
        lambda name, obj: stacks.append(f"slices/{name}") if isinstance(obj, h5py.Dataset) and obj.ndim == 3 else None
    )
    for name in stacks:
        del f[name]  # type: ignore[attr-defined]
        f.create_dataset(name, shape=(n, side, side), dtype="u1", chunks=(1, 1000, 1000), compression="gzip")  # type: ignore[attr-defined]
    table = f["layerwatch/layers"]  # type: ignore[index]
    rows = np.zeros(n, table.dtype)
    rows["stored"] = True
    table.resize((n,))
    table[:] = rows
