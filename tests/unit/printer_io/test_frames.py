"""Frame-quality checks: blur, frozen feed, too dark, too bright."""

from __future__ import annotations

import cv2
import numpy as np

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
