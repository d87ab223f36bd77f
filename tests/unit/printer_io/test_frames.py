"""Frame-quality checks: blur, frozen feed, too dark, too bright."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hostile import bomb_png

from printer_io.frames import QualityChecker
from segmentation.simulator import SimBuild


def _frame(layer: int) -> np.ndarray:
    return np.asarray(
        SimBuild(
            777,
            256,
            256,
            10,
        )
        .layer(layer)
        .image
    )


def test_sharp_simulated_layers_pass_and_blurred_ones_do_not() -> None:
    checker = QualityChecker()
    sharp = _frame(3)
    q = checker.check(sharp)
    assert q.ok, q
    blurred = cv2.GaussianBlur(sharp, (0, 0), 6)
    q = QualityChecker().check(blurred)
    assert q.blurry and not q.ok and "blurry" in q.problems


def test_the_same_frame_twice_is_a_frozen_feed() -> None:
    checker = QualityChecker()
    frame = _frame(3)
    assert not checker.check(frame).frozen
    assert checker.check(frame.copy()).frozen
    assert not checker.check(_frame(4)).frozen  # the next layer differs


def test_dark_and_bright_frames_are_flagged_in_8_and_16_bit() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 6, (128, 128))
    dark = (noise).astype(np.uint8)
    bright = (250 + noise // 2).astype(np.uint8)
    assert QualityChecker().check(dark).too_dark
    assert QualityChecker().check(bright).too_bright
    dark16 = dark.astype(np.uint16) * 256
    assert QualityChecker().check(dark16).too_dark
    colour = cv2.cvtColor(bright, cv2.COLOR_GRAY2BGR)
    assert QualityChecker().check(colour).too_bright


def test_the_header_gives_the_size_of_png_and_jpeg_without_decoding() -> None:
    from printer_io.frames import encode_image, image_size

    frame = np.zeros((48, 80, 3), np.uint8)
    assert image_size(encode_image(frame)) == (80, 48)
    assert image_size(encode_image(frame, "jpeg")) == (80, 48)
    ok, progressive = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and image_size(progressive.tobytes()) == (80, 48)
    assert image_size(bomb_png()) == (20_000, 20_000)
    for junk in (b"", b"\x89PNG", b"\xff\xd8\xff", b"\xff\xd8\xff\xda\x00\x02", b"GIF89a" + bytes(20)):
        assert image_size(junk) is None


def test_a_decompression_bomb_is_refused_from_its_header_before_any_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from printer_io import frames
    from printer_io.errors import PayloadError

    small = frames.encode_image(np.zeros((4, 8), np.uint8))
    assert frames.decode_image(small, "t", max_pixels=32, expect=(8, 4)).shape == (4, 8)

    def never(*args: object) -> None:
        raise AssertionError("the decoder was called")

    monkeypatch.setattr(frames.cv2, "imdecode", never)
    with pytest.raises(PayloadError, match=r"declares 20000x20000 = 400.0 Mpx, over the limit of 64.0 Mpx"):
        frames.decode_image(bomb_png(), "t", max_pixels=64_000_000)
    with pytest.raises(PayloadError, match="declares 8x4, its metadata 16x4"):
        frames.decode_image(small, "t", expect=(16, 4))
    with pytest.raises(PayloadError, match="not a PNG or JPEG"):
        frames.decode_image(b"GIF89a" + bytes(100), "t")
