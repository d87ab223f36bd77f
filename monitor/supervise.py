"""``layerwatch up``: a whole site from one config, supervised.

One process per part, each the ordinary command (so a part behaves and logs exactly as when run by hand):
the monitor; per ``[printers.<id>]`` with a layer trigger, its bridge; per ``[printers.<id>.camera]``, its
camera; and the dashboard. Each part's output lines are prefixed with its name. A part that exits is started
again after a back-off (1 s, doubling to 30 s; back to 1 s once it ran a minute), and the log says which part,
its exit status and when it comes back. SIGINT or SIGTERM stops every part (SIGTERM, then SIGKILL after 10 s).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from monitor.config import CameraSection, Config, PrinterSection

__all__ = ["Part", "Supervisor", "parts_for"]

log = logging.getLogger("layerwatch.up")

_BACKOFF_S = (1.0, 30.0)
_HEALTHY_S = 60.0


@dataclass
class Part:
    name: str
    argv: list[str]
    process: subprocess.Popen[str] | None = None
    starts: int = 0
    backoff_s: float = _BACKOFF_S[0]
    started_at: float = 0.0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)


def _bridge_argv(pid: str, section: PrinterSection, config: Path) -> list[str] | None:
    """The bridge reads the printer's backend and its settings from the config itself."""
    from printer_io.printer import backends

    b = backends().get(section.backend)
    if b is None or b.trigger is None:
        return None
    return ["bridge", "--printer", pid, "--config", str(config)]


def _camera_argv(pid: str, cam: CameraSection | None, config: Path, view: str | None = None) -> list[str] | None:
    if cam is None:
        return None
    argv = ["camera", "--printer", pid, "--config", str(config), "--source", cam.source, "--device", cam.device]
    argv += ["--seed", str(cam.seed), "--size", str(cam.size), "--settle", str(cam.settle_s)]
    argv += ["--attempts", str(cam.attempts), "--retry", str(cam.retry_s), "--encoding", cam.encoding]
    argv += ["--view", view or cam.view]
    if cam.path is not None:
        path = cam.path if cam.path.is_absolute() else config.parent / cam.path
        argv += ["--path", str(path)]
    return argv


def parts_for(config: Config, path: Path, dashboard: list[str] | None) -> list[Part]:
    """The parts of a site: monitor, bridges, cameras, dashboard (``dashboard``: its extra arguments, or None)."""
    parts = [Part("monitor", ["monitor", "--config", str(path)])]
    for pid, section in sorted(config.printers.items()):
        for kind, argv in (
            ("bridge", _bridge_argv(pid, section, path)),
            ("camera", _camera_argv(pid, section.camera, path)),
            ("recoat-camera", _camera_argv(pid, section.recoat_camera, path, view="recoat")),
        ):
            if argv is not None:
                parts.append(Part(f"{kind}:{pid}", argv))
    if dashboard is not None:
        parts.append(Part("dashboard", ["dashboard", "--records", str(config.monitor.out_dir), *dashboard]))
    return parts


class Supervisor:
    def __init__(self, parts: list[Part], state_file: Path | None = None) -> None:
        self.parts = parts
        self.state_file = state_file
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _start(self, part: Part) -> None:
        cmd = [sys.executable, "-m", "monitor.cli", *part.argv]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        part.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        part.starts += 1
        part.started_at = time.monotonic()
        threading.Thread(target=self._relay, args=(part, part.process), daemon=True).start()
        log.info("up: %s started (pid %d)", part.name, part.process.pid)
        self._write_state()

    @staticmethod
    def _relay(part: Part, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(f"[{part.name}] {line.rstrip()}\n")
            sys.stdout.flush()

    def _write_state(self) -> None:
        if self.state_file is None:
            return
        state = {
            p.name: {"pid": p.process.pid if p.process else None, "starts": p.starts, "exits": p.exits}
            for p in self.parts
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def run(self) -> None:
        """Start every part and keep them running until :meth:`stop`."""
        for part in self.parts:
            self._start(part)
        while not self._stop.wait(0.2):
            now = time.monotonic()
            for part in self.parts:
                proc = part.process
                if proc is not None and proc.poll() is not None:
                    code = proc.returncode
                    part.exits.append(code)
                    part.process = None
                    if now - part.started_at > _HEALTHY_S:
                        part.backoff_s = _BACKOFF_S[0]
                    part.next_start = now + part.backoff_s
                    wait = part.backoff_s
                    log.error("up: %s exited with status %d; starting it again in %.0f s", part.name, code, wait)
                    part.backoff_s = min(part.backoff_s * 2, _BACKOFF_S[1])
                    self._write_state()
                elif proc is None and now >= part.next_start:
                    self._start(part)
        self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        running = [p for p in self.parts if p.process is not None and p.process.poll() is None]
        for part in running:
            assert part.process is not None
            part.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for part in running:
            assert part.process is not None
            try:
                part.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("up: %s did not stop in 10 s; killed", part.name)
                part.process.kill()
        log.info("up: every part stopped")
