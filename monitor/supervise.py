"""``layerwatch up``: a whole site from one config, supervised.

One process per part, each the ordinary command (so a part behaves and logs exactly as when run by hand):
the monitor; per ``[printers.<id>]`` with a layer trigger, its bridge; per ``[printers.<id>.camera]``, its
camera; and the dashboard. Each part's output lines are prefixed with its name. A part that exits is started
again after a back-off (1 s, doubling to 30 s; back to 1 s once it ran a minute), and the log says which part,
its exit status and when it comes back; one that ends on its configuration (exit status 78: a missing secret
file, credentials the broker refuses) is not started again. Before anything starts, :func:`preflight` checks
each part's broker user: its password file, the broker's answer, and the ACL where the config names it.
SIGINT or SIGTERM stops every part (SIGTERM, then SIGKILL after 10 s).
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
from monitor.settings import EXIT_CONFIG

__all__ = ["Part", "Supervisor", "parts_for", "preflight"]

log = logging.getLogger("layerwatch.up")

_BACKOFF_S = (1.0, 30.0)
_READY_S = 120.0  # the longest the other parts wait for the monitor to say it judges
_MONITOR_READY = ("monitor: judging", "monitor: worker")  # its first line once its links are subscribed
_HEALTHY_S = 60.0


@dataclass
class Part:
    name: str
    argv: list[str]
    kind: str = ""  # monitor, bridge, camera, recoat-camera, dashboard
    printer: str | None = None
    own_user: bool = False  # connects as its own broker user: the environment's [mqtt] user is not handed to it
    process: subprocess.Popen[str] | None = None
    starts: int = 0
    backoff_s: float = _BACKOFF_S[0]
    started_at: float = 0.0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)
    stopped: bool = False  # ended on its configuration: not started again


def _bridge_argv(pid: str, section: PrinterSection, config: Path) -> list[str] | None:
    """The bridge reads the printer's backend and its settings from the config itself."""
    from printer_io.printer import backends

    b = backends().get(section.backend)
    if b is None or b.trigger is None or not section.bridge:
        return None
    return ["bridge", "--printer", pid, "--config", str(config)]


def _camera_argv(pid: str, cam: CameraSection | None, config: Path, view: str | None = None) -> list[str] | None:
    if cam is None:
        return None
    argv = ["camera", "--printer", pid, "--config", str(config), "--source", cam.source, "--device", cam.device]
    argv += ["--seed", str(cam.seed), "--size", str(cam.size), "--settle", str(cam.settle_s)]
    argv += ["--attempts", str(cam.attempts), "--retry", str(cam.retry_s), "--encoding", cam.encoding]
    argv += ["--view", view or cam.view]
    if cam.defects:
        argv.append("--defects")
    if cam.path is not None:
        path = cam.path if cam.path.is_absolute() else config.parent / cam.path
        argv += ["--path", str(path)]
    return argv


def parts_for(config: Config, path: Path, dashboard: list[str] | None) -> list[Part]:
    """The parts of a site: monitor, bridges, cameras, dashboard (``dashboard``: its extra arguments, or None)."""
    parts = [Part("monitor", ["monitor", "--config", str(path)], "monitor")]
    for pid, section in sorted(config.printers.items()):
        for kind, argv in (
            ("bridge", _bridge_argv(pid, section, path)),
            ("camera", _camera_argv(pid, section.camera, path)),
            ("recoat-camera", _camera_argv(pid, section.recoat_camera, path, view="recoat")),
        ):
            if argv is not None:
                parts.append(Part(f"{kind}:{pid}", argv, kind, pid))
    if dashboard is not None:
        argv = ["dashboard", "--records", str(config.monitor.out_dir), "--config", str(path), *dashboard]
        parts.append(Part("dashboard", argv, "dashboard"))
    for part in parts:
        part.own_user = config.part_credentials(part.kind, part.printer)[0] is not None
    return parts


def preflight(config: Config, parts: list[Part]) -> list[str]:
    """What would stop a part from doing its job on this broker, one line each, before anything starts: a
    missing password file, credentials the broker refuses, and (with ``[site] acl_file``) a topic the ACL does
    not let the part's user publish or subscribe to. A broker that does not answer yet is not a problem here
    (the parts wait for it)."""
    from monitor.security import acl_allows, parse_acl, part_needs
    from printer_io.errors import ConfigError, MqttAuthError, MqttError
    from printer_io.mqtt import MqttLink
    from printer_io.topics import Topics

    problems: list[str] = []
    acl_path = config.path(config.site.acl_file) if config.site.acl_file is not None else None
    rules = None
    if acl_path is not None:
        try:
            rules = parse_acl(acl_path)
        except OSError as err:
            problems.append(f"[site] acl_file {acl_path}: {err.strerror or err}")
    printers = sorted(config.printers)
    reachable = True
    for part in parts:
        mqtt = config.mqtt_for(part.kind, part.printer) if part.kind != "monitor" else config.mqtt
        user = mqtt.username or "(no user)"
        if mqtt.password_file is not None and not mqtt.password_file.is_file():
            problems.append(
                f"{part.name} connects as {user}, but its password file {mqtt.password_file} does not exist "
                "(layerwatch security broker-config writes credentials/<user>.password)"
            )
            continue
        if rules is not None:
            for access, topic in part_needs(part.kind, part.printer, mqtt.prefix, printers):
                if not acl_allows(rules, user, access, topic):
                    verb = "publish on" if access == "write" else "subscribe to"
                    problems.append(
                        f"{part.name} connects as {user}, which the ACL {acl_path} does not let {verb} {topic}"
                    )
        if not reachable:
            continue
        probe = MqttLink(
            mqtt.model_copy(update={"connect_timeout_s": 5.0}),
            service=f"up-check-{part.kind}",
            topics=Topics(mqtt.prefix, part.printer or "site"),
            ephemeral=True,
        )
        try:
            probe.start()
            probe.close()
        except MqttAuthError as err:
            problems.append(f"{part.name}: {err}")
        except ConfigError as err:
            problems.append(f"{part.name}: {err}")
        except MqttError as err:
            log.warning("up: %s; the parts will wait for the broker", err)
            reachable = False
    return problems


class Supervisor:
    def __init__(self, parts: list[Part], state_file: Path | None = None) -> None:
        self.parts = parts
        self.state_file = state_file
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._monitor_ready = threading.Event()

    def _start(self, part: Part) -> None:
        from printer_io.mqtt import PASSWORD_ENV, USERNAME_ENV

        cmd = [sys.executable, "-m", "monitor.cli", *part.argv]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if part.own_user:  # the environment's broker user is the monitor's, not this part's
            env.pop(USERNAME_ENV, None)
            env.pop(PASSWORD_ENV, None)
        part.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        part.starts += 1
        part.started_at = time.monotonic()
        threading.Thread(target=self._relay, args=(part, part.process), daemon=True).start()
        log.info("up: %s started (pid %d)", part.name, part.process.pid)
        self._write_state()

    def _relay(self, part: Part, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if part.kind == "monitor" and line.startswith(_MONITOR_READY):
                self._monitor_ready.set()
            sys.stdout.write(f"[{part.name}] {line.rstrip()}\n")
            sys.stdout.flush()

    def _write_state(self) -> None:
        if self.state_file is None:
            return
        state = {
            p.name: {
                "pid": p.process.pid if p.process else None,
                "starts": p.starts,
                "exits": p.exits,
                "stopped": p.stopped,
            }
            for p in self.parts
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def run(self) -> None:
        """Start every part and keep them running until :meth:`stop`. The monitor first: the others start once it
        says it judges (its subscriptions are in place), so a print started as soon as ``up`` is up loses no layer
        (a broker keeps nothing for a session that has not subscribed yet)."""
        monitors = [p for p in self.parts if p.kind == "monitor"]
        for part in monitors:
            self._start(part)
        if monitors and not self._monitor_ready.wait(_READY_S):
            log.warning("up: the monitor did not say it judges within %.0f s; starting the other parts", _READY_S)
        for part in self.parts:
            if part.kind != "monitor" and not self._stop.is_set():
                self._start(part)
        while not self._stop.wait(0.2):
            now = time.monotonic()
            for part in self.parts:
                proc = part.process
                if proc is not None and proc.poll() is not None:
                    code = proc.returncode
                    part.exits.append(code)
                    part.process = None
                    if code == EXIT_CONFIG:  # no restart fixes a wrong configuration
                        part.stopped = True
                        log.error(
                            "up: %s stopped on its configuration (the line above says what); not started again: "
                            "fix the config and run `layerwatch up` again (the other parts go on)",
                            part.name,
                        )
                        self._write_state()
                        continue
                    if now - part.started_at > _HEALTHY_S:
                        part.backoff_s = _BACKOFF_S[0]
                    part.next_start = now + part.backoff_s
                    wait = part.backoff_s
                    log.error("up: %s exited with status %d; starting it again in %.0f s", part.name, code, wait)
                    part.backoff_s = min(part.backoff_s * 2, _BACKOFF_S[1])
                    self._write_state()
                elif proc is None and not part.stopped and now >= part.next_start:
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
