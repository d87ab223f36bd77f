"""Real peers for the integration tests: Mosquitto, OctoPrint, Moonraker, started on 127.0.0.1 and free ports.

A peer that is not installed makes its tests skip with the install command, except under
``LAYERWATCH_REQUIRE_PEERS=1`` (set by ``make test`` and so by CI), where a missing peer fails the run.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("LAYERWATCH_PEERS", REPO / ".peers"))


def require(what: str, hint: str) -> None:
    """Skip (or fail under LAYERWATCH_REQUIRE_PEERS=1) because ``what`` is missing."""
    message = f"{what} is not installed: {hint}"
    if os.environ.get("LAYERWATCH_REQUIRE_PEERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"peer exited with {proc.returncode} before listening on {port}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_until(what: str, ok: Any, timeout: float = 120) -> None:
    """Polls ``ok()`` every 0.2 s until it is true; fails with "never: <what>" after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


@contextlib.contextmanager
def site_broker(folder: Path, printers: str = "p1") -> Iterator[int]:
    """docs/deploy.md, step 1: ``layerwatch security broker-config`` into ``folder`` on a free port and Mosquitto
    started on that set-up (as this user: as root it would drop to "mosquitto", who cannot read our files);
    yields the port."""
    from monitor.cli import main

    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        require("mosquitto", "apt-get install mosquitto (make test does it)")
    port = free_port()
    args = ["security", "broker-config", "--printers", printers, "--out", str(folder), "--port", str(port)]
    assert main([*args, "--run-as", getpass.getuser()]) == 0
    broker = subprocess.Popen([exe, "-c", str(folder / "mosquitto.conf")], stdout=subprocess.DEVNULL)
    try:
        wait_port(port, 10, broker, None)
        yield port
    finally:
        stop(broker)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Mosquitto:
    """A Mosquitto broker with two listeners: anonymous (``port``) and password file + ACL (``auth_port``).

    Persistence is on with ``autosave_on_changes true`` and ``autosave_interval 1``: a broker killed
    right after a publish keeps the queued messages (with the default periodic autosave it loses them).
    """

    USER, PASSWORD = "lw-camera", "s3cret-pw"
    READER, READER_PASSWORD = "lw-reader", "reader-pw"

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            require("mosquitto", "apt-get install mosquitto (make test does it)")
        self.exe = str(exe)
        self.dir = workdir
        self.port = free_port()
        self.auth_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"
        pw = workdir / "passwd"
        pw.write_text("")
        pw.chmod(0o600)
        for user, password in ((self.USER, self.PASSWORD), (self.READER, self.READER_PASSWORD)):
            subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True, capture_output=True)
        acl = workdir / "acl"
        acl.write_text(
            f"user {self.USER}\ntopic readwrite layerwatch/#\n\nuser {self.READER}\ntopic read layerwatch/#\n"
        )
        acl.chmod(0o600)
        (workdir / "data").mkdir(exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            # as root, mosquitto drops to user "mosquitto", who cannot read our files: stay who we are
            f"user {getpass.getuser()}\n"
            "per_listener_settings true\n"
            "persistence true\n"
            f"persistence_location {workdir / 'data'}/\n"
            "autosave_on_changes true\n"
            "autosave_interval 1\n"
            "max_queued_messages 10000\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.auth_port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {pw}\nacl_file {acl}\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.auth_port}"

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_port(self.port, 10, self.proc, self.log)
        wait_port(self.auth_port, 10, self.proc, self.log)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)
            self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir).start()
    try:
        yield broker
    finally:
        broker.stop()


class OctoPrint:
    """A headless OctoPrint (own venv, ``.peers/octoprint``) with its bundled Virtual Printer and one admin.

    ``api_key`` is the admin's per-user key from ``users.yaml``; ``serial_log`` is the Virtual Printer's log of
    every line it received (where M220/M221 show up).
    """

    USER, PASSWORD = "lwadmin", "lw-admin-pw"
    LIMITED = "lwpause"

    def __init__(self, workdir: Path) -> None:
        exe = PEERS / "octoprint" / "bin" / "octoprint"
        if not exe.exists():
            require("OctoPrint", f"make peers (creates {PEERS / 'octoprint'} with pip install octoprint)")
        self.exe = str(exe)
        self.basedir = workdir / "octoprint"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "octoprint.out"
        self.api_key = ""
        self.limited_api_key = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def serial_log(self) -> Path:
        return self.basedir / "logs" / "plugin_virtual_printer_serial.log"

    def configure(self) -> None:
        import yaml  # OctoPrint's venv is not ours; PyYAML comes with our dev extras

        self.basedir.mkdir(parents=True, exist_ok=True)
        outside = ["announcements", "tracking", "softwareupdate", "pluginmanager", "discovery", "errortracking"]
        config = {
            "server": {
                "host": "127.0.0.1",
                "port": self.port,
                "firstRun": False,
                "onlineCheck": {"enabled": False},
                "pluginBlacklist": {"enabled": False},
                "seenWizards": {"corewizard": 4, "backup": None},
            },
            "plugins": {
                "_disabled": outside,
                "virtual_printer": {"enabled": True, "simulateReset": False, "throttle": 0.0},
            },
            "serial": {"log": True, "autoconnect": False},
            "webcam": {"webcamEnabled": False},
            "api": {"allowCrossOrigin": False},
        }
        (self.basedir / "config.yaml").write_text(yaml.safe_dump(config))
        subprocess.run(
            [
                self.exe,
                "--basedir",
                str(self.basedir),
                "user",
                "add",
                self.USER,
                "--password",
                self.PASSWORD,
                "--admin",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [self.exe, "--basedir", str(self.basedir), "user", "add", self.LIMITED, "--password", self.PASSWORD],
            check=True,
            capture_output=True,
        )
        # `user add` leaves apikey null; the per-user key lives in users.yaml, so we set one there.
        # The limited user is what docs/printers.md recommends for LayerWatch: STATUS and PRINT only.
        users_file = self.basedir / "users.yaml"
        users = yaml.safe_load(users_file.read_text())
        users[self.USER]["apikey"] = secrets.token_hex(16).upper()
        users[self.LIMITED].update(apikey=secrets.token_hex(16).upper(), groups=[], permissions=["STATUS", "PRINT"])
        users_file.write_text(yaml.safe_dump(users))

    def start(self) -> OctoPrint:
        import httpx
        import yaml

        if not (self.basedir / "users.yaml").exists():
            self.configure()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    self.exe,
                    "--basedir",
                    str(self.basedir),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--iknowwhatimdoing",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, 60, self.proc, self.log)
        users = yaml.safe_load((self.basedir / "users.yaml").read_text())
        self.api_key = str(users[self.USER]["apikey"])
        self.limited_api_key = str(users[self.LIMITED]["apikey"])
        end = time.monotonic() + 60  # the port opens before the app answers
        while time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/api/version", headers={"X-Api-Key": self.api_key}).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"OctoPrint did not answer /api/version within 60 s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class Moonraker:
    """The real Moonraker (own venv, ``.peers/moonraker``) talking to our Klippy stand-in on a Unix socket."""

    def __init__(self, workdir: Path, printer: object) -> None:
        exe = PEERS / "moonraker" / "bin" / "moonraker"
        if not exe.exists():
            require("Moonraker", f"make peers (creates {PEERS / 'moonraker'} with pip install moonraker)")
        from klippy_standin import KlippyStandIn

        from printer_io.virtual import VirtualPrinter

        assert isinstance(printer, VirtualPrinter)
        self.exe = str(exe)
        self.dir = workdir / "moonraker"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.socket = self.dir / "klippy.sock"
        self.klippy = KlippyStandIn(self.socket, printer)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "moonraker.out"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Moonraker:
        import httpx

        self.klippy.start()
        conf = self.dir / "moonraker.conf"
        conf.write_text(
            f"[server]\nhost: 127.0.0.1\nport: {self.port}\nklippy_uds_address: {self.socket}\n\n"
            "[machine]\nprovider: none\nvalidate_service: False\n\n"
            "[authorization]\ntrusted_clients:\n  127.0.0.0/8\n"
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.exe, "-d", str(self.dir / "data"), "-c", str(conf), "-l", str(self.dir / "moonraker.log")],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, 60, self.proc, self.log)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError):
                info = httpx.get(self.url + "/server/info").json().get("result", {})
                if info.get("klippy_state") == "ready":
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"Moonraker did not report klippy_state ready within 60 s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        self.klippy.close()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# headless Chromium on a machine without outside network: no sandbox as root, no GPU, and none of the
# background connections that would be refused at every start
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium through Playwright (no browser download)."""
    if not Path(CHROMIUM).exists():
        require("chromium", "apt-get install chromium (make test does it)")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)


class WebhookReceiver:
    """A local webhook endpoint (what a farm's notification service would be): every POST's JSON body and the
    time it arrived."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts: list[tuple[float, dict[str, Any]]] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.cond:
                    outer.posts.append((time.time(), json.loads(body or b"{}")))
                    outer.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 60) -> list[tuple[float, dict[str, Any]]]:
        """The first ``n`` posts, once they have come."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.posts) >= n, timeout), f"{len(self.posts)} posts"
            return list(self.posts)

    def close(self) -> None:
        self.server.shutdown()
