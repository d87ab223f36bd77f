"""A local MQTT broker for the demo: Mosquitto on a free loopback port when installed, else amqtt in-process.

amqtt (pure Python) speaks only MQTT 3.1.1 and its persistence is not reliable: fine for a one-command
demo on a machine without Mosquitto, not for production or the reliability tests (docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

__all__ = ["LocalBroker"]

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto() -> str | None:
    exe = shutil.which("mosquitto")
    if exe is None and Path("/usr/sbin/mosquitto").exists():
        exe = "/usr/sbin/mosquitto"
    return exe


class LocalBroker:
    """``with LocalBroker() as b: b.url, b.protocol`` (``"5"`` for Mosquitto, ``"3.1.1"`` for amqtt)."""

    def __init__(self, prefer: Literal["auto", "mosquitto", "amqtt"] = "auto") -> None:
        self.prefer = prefer
        self.port = _free_port()
        self.kind = ""
        self.protocol: Literal["5", "3.1.1"] = "5"
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        exe = _mosquitto() if self.prefer in ("auto", "mosquitto") else None
        if exe is not None:
            self._start_mosquitto(exe)
        elif self.prefer == "mosquitto":
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto, or use the amqtt broker")
        else:
            self._start_amqtt()
        return self

    def _start_mosquitto(self, exe: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="layerwatch-broker-")
        d = Path(self._tmp.name)
        conf = d / "mosquitto.conf"
        conf.write_text(
            f"user {getpass.getuser()}\npersistence true\npersistence_location {d}/\nautosave_on_changes true\n"
            f"autosave_interval 1\nlog_dest file {d / 'mosquitto.log'}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        )
        self._proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait()
        self.kind, self.protocol = "mosquitto", "5"

    def _start_amqtt(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "sys_interval": 0,
            "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
            "topic-check": {"enabled": False},
        }
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="amqtt", daemon=True).start()

        async def start() -> Any:
            broker = Broker(config)
            await broker.start()
            return broker

        for name in ("amqtt", "transitions", "passlib"):
            logging.getLogger(name).setLevel(logging.ERROR)  # it logs every connection at INFO
        self._broker = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        self._loop = loop
        self._wait()
        self.kind, self.protocol = "amqtt", "3.1.1"

    def _wait(self) -> None:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode} at start")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the local broker did not open 127.0.0.1:{self.port} within 15 s")

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._loop is not None and self._broker is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
