"""Crafted inputs an attacker on the network could send (issue 13), shared by unit and integration tests."""

from __future__ import annotations

import struct
import zlib


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """Issue 13 F6: a PNG that declares 20000x20000 16-bit colour (2.4 GB decoded) in about 1 kB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    idat = zlib.compress(b"\0" * 1_000_000, 9)  # the start of its zero rows
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
