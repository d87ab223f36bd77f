"""``layerwatch monitor``: judge every layer of every configured printer.

Per printer (:class:`PrinterMonitor`): one MQTT link (persistent session ``layerwatch-monitor-<printer>``)
subscribed to the printer's image, action and layer topics. Its parts, each in its own module:

- :mod:`monitor.pipeline`: a frame's path, one stage after the other (decode, admit, segment, decide, act,
  store, publish), then the observers;
- :mod:`monitor.opening`: a build opened, or continued from its record after a restart;
- :mod:`monitor.observers`: lighting reference, drift, notifications, Home Assistant, shadow model, each isolated;
- :mod:`monitor.jobs`: layer events, the printer's own state (read by the watcher), the end of a job;
- :mod:`monitor.requests`: an operator's verified requests.

The model is loaded once at start and shared by all printers. Bad input is logged, counted and published as
an event; the service goes on, and no stored layer is lost. A redelivered layer is not acted on twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monitor import __version__
from monitor.buildstate import Build, CameraPresence, record_stem
from monitor.config import Config
from monitor.controller import Controller
from monitor.jobs import NO_FRAME_S, STATE_POLL_S, JobWatch
from monitor.observers import Observers
from monitor.pipeline import LayerPath
from monitor.policy import Policy
from monitor.ports import Handler
from monitor.record import BuildRecord, RecordError, RecordReader, build_records
from monitor.requests import OperatorRequests
from printer_io.bus import Link, MessageBus, open_link
from printer_io.credentials import Credential, Verifier, load_operators
from printer_io.errors import ConfigError, PayloadError
from printer_io.messages import ActionMessage, EventLevel, EventMessage
from printer_io.mqtt import MqttConfig, anonymous_allowed
from printer_io.printer import Printer, create_printer
from printer_io.topics import Topics
from printer_io.vocabulary import ActionKind

__all__ = ["MonitorService", "PrinterMonitor", "record_stem"]

log = logging.getLogger(__name__)

_REFUSAL_EVERY_S = 10.0  # refused input of one kind is said at most this often
_REFUSED_INPUT = frozenset(
    {
        "frame_undecodable", "frame_size", "part_ids_size", "build_ended", "frames_dropped", "other_job_refused",
        "end_event_refused", "layer_refused",
    }
)  # fmt: skip
_MOVES = frozenset({ActionKind.PAUSE, ActionKind.RESUME, ActionKind.CANCEL})  # actions that change what a printer does


class PrinterMonitor:
    """Everything the monitor keeps for one printer: its link, printer, controller, open build and parts."""

    def __init__(
        self, service: MonitorService, printer_id: str, link: Link, printer: Printer | None, policy: Policy
    ) -> None:
        self.service = service
        self.printer_id = printer_id
        self.link = link
        self.printer = printer
        self.policy = policy
        cfg = service.config
        section = cfg.printers.get(printer_id)
        names = dict(section.object_names) if section else {}
        self.controller = Controller(
            printer,
            printer_id=printer_id,
            emit_action=self._emit_action,
            emit_event=self.emit_event,
            limits=cfg.controller,
            object_name=lambda pid: names.get(str(pid), f"part_{pid}"),
        )
        self.build: Build | None = None
        self.last_record: Path | None = None  # the record of the current or most recent build
        self.lock = threading.RLock()  # the record is written from the link's worker and the controller's
        self.counters: Counter[str] = Counter(
            {"layers": 0, "duplicates": 0, "late": 0, "bad_frames": 0, "needs_review": 0, "refused_requests": 0,
             "shadow_failed": 0, "drift": 0}
        )  # fmt: skip
        self._said: dict[str, tuple[float, int]] = {}
        self.holder: Any = None  # monitor.workers.PrinterLock, where workers share the site
        self.released = False
        self.camera = CameraPresence()
        self.jobs = JobWatch(self)
        self.requests = OperatorRequests(self, self._record_action)
        self.path = LayerPath(self)
        self.observers = Observers(self)

    # ---- the handlers of the printer's topics ------------------------------------------------------------
    def on_frame(self, topic: str, payload: bytes) -> None:
        self.path.on_frame(topic, payload)

    def on_action(self, topic: str, payload: bytes) -> None:
        self.requests.on_action(topic, payload)

    def on_layer_event(self, topic: str, payload: bytes) -> None:
        self.jobs.on_layer_event(topic, payload)

    def check_frames(self, wait_s: float = NO_FRAME_S) -> None:
        self.jobs.check_frames(wait_s)

    # ---- holding the printer (site workers) ---------------------------------------------------------
    def owned(self, handler: Handler) -> Handler:
        """``handler``, run only while this process holds the printer (its ``holder``, where workers share
        the site): a worker that took the printer over waits here until the previous one let go of it."""

        def run(topic: str, payload: bytes) -> None:
            if self.holder is not None and not self.holder.acquire(lambda: self.link.connected and not self.released):
                raise PayloadError(f"{topic}: {self.printer_id} went to another worker; message left to it", "moved")
            handler(topic, payload)

        return run

    def release(self) -> None:
        """Let go of the printer: its record stays open ("writing") for the next holder, its lock is freed."""
        self.controller.wait_idle(30)  # not under the lock: an action's outcome takes it to be recorded
        with self.lock:
            self.released = True
            if self.build is not None:
                self.build.record.close("writing")
                build = self.build
                log.info("%s: let go of build %s after layer %d", self.printer_id, build.job_id, build.last_layer)
                self.build = None
            if self.holder is not None:
                self.holder.release()

    def between_builds(self) -> bool:
        """Whether the printer is between builds: its build ended, or (none opened since it was taken) the newest
        record in its folder is not being written.

        Read under the printer's lock, as every other read of its records: HDF5 refuses to open a file for
        writing while the same process has it open to read, so a read beside the frame handler would cost the
        layer it is opening the record for."""
        with self.lock:
            if self.build is not None:
                return bool(self.build.end_reason)
            records = build_records(self.service.config.monitor.out_dir / self.printer_id)
            if not records:
                return True
            try:
                with RecordReader(max(records, key=lambda r: r.stat().st_mtime)) as reader:
                    return reader.state != "writing"
            except (RecordError, OSError):
                return False

    def close_build(self, state: str = "closed", job_id: str | None = None) -> None:
        """Close the current build's record (only if it is still ``job_id``'s, where given). The controller's
        last outcomes are waited for without the lock (their handler takes it to record them)."""
        if self.build is None or (job_id is not None and self.build.job_id != job_id):
            return
        self.controller.wait_idle(30)
        with self.lock:
            build = self.build
            if build is None or (job_id is not None and build.job_id != job_id):
                return
            if build.end_reason:
                self.emit_event("info", "job_ended", f"{build.end_reason}: record closed", build.last_layer)
            build.record.close(state)
            self.jobs.ended_jobs.add(build.job_id)
            log.info("%s: build %s %s (%d layers judged)", self.printer_id, build.job_id, state, build.layers_judged)
            self.build = None

    # ---- counting and saying ------------------------------------------------------------------------
    def emit_notify_failure(self, why: str) -> None:
        layer = self.build.last_layer if self.build is not None else 0
        self.emit_event("warning", "notify_failed", why, max(layer, 0))

    def refusal(self, code: str, said: str, layer: int, short: str, reason: str) -> PayloadError:
        """Refused input: a warning event (said once per interval per kind) and the error that counts it."""
        self.emit_event("warning", code, said, layer)
        return PayloadError(short, reason)

    def _record_action(self, msg: ActionMessage) -> None:
        """An action (request or outcome) in the record of the build it was taken for: the open one, else that
        build's closed record (an outcome that came after the record closed is not written into the next build)."""
        detail: dict[str, Any] = {
            "reason": msg.reason,
            "metrics": msg.metrics,
            "model": msg.model,
            "detail": msg.detail,
            "gcode": msg.gcode,
            "severity": msg.severity,
            "operator": msg.operator,
        }
        where = self.controller.where(msg.request_id)
        if where:  # the rectangles of the frame the rule measured (x, y, width, height in camera px)
            detail["where"] = [list(b) for b in where]

        def write(record: BuildRecord) -> None:
            record.add_action(
                msg.layer or 0, msg.request_id, msg.action, msg.state.value, msg.rule, msg.incident, detail, at=msg.time
            )

        build = self.build
        if build is not None and (not msg.job_id or msg.job_id == build.job_id):
            write(build.record)
        elif msg.job_id:
            try:
                self.requests.in_record(lambda job: job == msg.job_id, f"job {msg.job_id!r}", lambda _: None, write)
            except PayloadError as err:
                log.warning("%s: %s %s not recorded: %s", self.printer_id, msg.action, msg.state.value, err)

    def _emit_action(self, msg: ActionMessage) -> None:
        if msg.action in _MOVES:
            # what the printer does changes: a reading taken before is not decided on (first, before the lock,
            # which a layer being judged holds: the controller must not take a pause it just made for a resume)
            self.jobs.acted(msg)
        with self.lock:
            self._record_action(msg)
        level = logging.WARNING if msg.action in ("pause", "cancel") else logging.INFO
        log.log(
            level, "%s: %s %s at layer %s: %s %s",
            self.printer_id, msg.action, msg.state.value, msg.layer, msg.reason, msg.detail,
        )  # fmt: skip
        self.publish(self.link.topics.action, msg.to_json())

    def say_now(self, kind: str) -> int | None:
        """Whether ``kind`` of refusal may be said now (once per _REFUSAL_EVERY_S): how many were held back since
        it was last said, or None (and it is counted) when it was said too recently."""
        now = time.monotonic()
        said, held = self._said.get(kind, (-1e9, 0))
        if now - said < _REFUSAL_EVERY_S:
            self._said[kind] = (said, held + 1)
            return None
        self._said[kind] = (now, 0)
        return held

    def emit_event(self, level: str, code: str, message: str, layer: int) -> None:
        if code in _REFUSED_INPUT:
            # refused input is said once per interval per kind, with how many were not said: a flood of bad
            # messages must not flood the record, the log and the event topic
            held = self.say_now(code)
            if held is None:
                return
            if held:
                message = f"{message} ({held} more of these since the last said)"
        with self.lock:
            if self.build is not None:
                self.build.record.add_event(layer, level, code, message)
        loudness = {"critical": logging.ERROR, "error": logging.ERROR, "warning": logging.WARNING}
        log.log(loudness.get(level, logging.INFO), "%s: %s", self.printer_id, message)
        event = EventMessage(
            printer=self.printer_id,
            service="monitor",
            level=EventLevel(level),
            code=code,
            message=message[:4000],
            job_id=self.build.job_id if self.build else "",
            layer=layer,
        )
        self.publish(self.link.topics.event, event.to_json())

    def publish(self, topic: str, payload: bytes) -> None:
        try:
            self.link.publish(topic, payload)
        except Exception as err:  # never let a publish failure take the judgement down
            log.warning("%s: could not publish on %s: %s", self.printer_id, topic, err)


class MonitorService:
    """The monitor for all configured printers. ``printers`` overrides backends (the demo's virtual printer)."""

    def __init__(
        self,
        config: Config,
        *,
        printer_ids: list[str] | None = None,
        printers: Mapping[str, Printer | None] | None = None,
        bus: MessageBus | None = None,
    ) -> None:
        """``bus``: links on this in-process bus instead of the configured MQTT broker (demo, replay, tests)."""
        self.config = config
        self.bus = bus
        self.printer_ids = printer_ids or sorted(config.printers)
        if not self.printer_ids:
            raise ValueError("no printer to monitor: add a [printers.<id>] table to the config or pass --printer ID")
        self._given = dict(printers or {})
        self.monitors: dict[str, PrinterMonitor] = {}
        self.segmenter: Any = None
        self.model_id = ""
        self.model_sha256 = ""
        self._store_stamp = 0.0
        self.shadow: Any = None  # the candidate run beside the model in use ([monitor] shadow_model)
        self.notifier: Any = None  # monitor.notify.Notifier, where [notifications] has routes
        self.shadow_id = ""
        self.shadow_sha256 = ""
        self._stop = threading.Event()
        self._idle: threading.Thread | None = None
        self._last_poll = 0.0
        self.policy: Policy | None = None
        self.site: Any = None  # monitor.workers.SiteWorker, where workers share the site ([monitor] group)
        operators_file = config.operators_file()
        operators = load_operators(operators_file) if operators_file is not None else {}
        self.verifier = Verifier(operators, window_s=config.security.signature_window_s)
        ha = config.homeassistant
        # the operator Home Assistant's Pause button signs as (its secret stays in this process)
        self.ha_operator = (
            Credential(ha.operator, operators[ha.operator]) if ha.enabled and ha.operator in operators else None
        )
        if not operators:
            log.warning(
                "monitor: no operators file ([security] operators_file or LAYERWATCH_OPERATORS_FILE): operator "
                "requests (pause, resume, verdicts, plate outline) from the network are refused; only the policy acts"
            )

    def _load_model(self, model: Path | None = None) -> tuple[Any, str, str]:
        """The segmenter of ``model``, else of the model to use: the configured one, else the store's current,
        else the shipped."""
        from monitor.models import ModelStore, model_name
        from segmentation.inference import DEFAULT_MODEL, Segmenter
        from segmentation.model import file_sha256

        cfg = self.config.monitor
        if model is None:
            self._store_stamp = ModelStore(cfg.models_dir).stamp()
            model = cfg.model or ModelStore(cfg.models_dir).current_model(DEFAULT_MODEL)
        segmenter = Segmenter(
            model_path=model, engine=cfg.engine, threads=cfg.threads, max_pixels=cfg.max_frame_pixels
        ).start()
        sha = file_sha256(Path(model))
        return segmenter, f"{model_name(Path(model))}@{sha[:12]}", sha

    def _follow_store(self) -> None:
        """Switch to the store's current model when it changed (a promotion or a rollback), between layers.
        A model that does not load leaves the one in use, said in the log and in every live record."""
        from monitor.models import ModelStore

        cfg = self.config.monitor
        stamp = ModelStore(cfg.models_dir).stamp()
        if cfg.model is not None or stamp == self._store_stamp:
            return
        self._store_stamp = stamp  # a store that cannot be used is said once per change, not every second
        try:
            segmenter, model_id, sha = self._load_model()
        except Exception as err:  # any failure keeps the model in use
            log.error("monitor: the promoted model cannot be used (%s); keeping %s", err, self.model_id)
            why = f"the new model cannot be used ({err}); kept {self.model_id}"
            self._tell_builds("error", "model_not_switched", why)
            return
        monitors = list(self.monitors.values())
        for pm in monitors:  # no layer is being judged while the model changes
            pm.lock.acquire()
        try:
            old, self.segmenter = self.segmenter, segmenter
            previous, self.model_id, self.model_sha256 = self.model_id, model_id, sha
        finally:
            for pm in reversed(monitors):
                pm.lock.release()
        old.close()
        log.warning("monitor: model switched from %s to %s (model store %s)", previous, model_id, cfg.models_dir)
        self._tell_builds("info", "model_changed", f"model switched from {previous} to {model_id}")

    def _tell_builds(self, level: str, code: str, message: str) -> None:
        for pm in list(self.monitors.values()):
            with pm.lock:
                if pm.build is not None:
                    pm.build.record.add_event(max(pm.build.last_layer, 0), level, code, message)

    def start(self) -> MonitorService:
        if self.segmenter is not None:
            return self  # already started (``with MonitorService(...).start():``)
        cfg = self.config
        self.segmenter, self.model_id, self.model_sha256 = self._load_model()
        if cfg.notifications.routes:
            from monitor.notify import Notifier

            def failed(printer: str, why: str) -> None:
                pm = self.monitors.get(printer)
                if pm is not None:
                    pm.emit_notify_failure(why)

            self.notifier = Notifier(cfg.notifications, cfg.source, failed)
        if cfg.monitor.shadow_model is not None:
            self.shadow, self.shadow_id, self.shadow_sha256 = self._load_model(cfg.monitor.shadow_model)
            log.info("monitor: shadow model %s runs beside %s, acting on nothing", self.shadow_id, self.model_id)
        self.policy = cfg.resolved_policy()
        try:
            if cfg.monitor.group:
                from monitor.workers import SiteWorker

                if self.bus is not None or cfg.mqtt.protocol != "5":
                    raise ConfigError(
                        f"[monitor] group {cfg.monitor.group!r}: workers share printers through an MQTT 5 broker "
                        '(shared subscriptions, delayed wills); set [mqtt] protocol = "5" or remove the group'
                    )

                self.site = SiteWorker(self).start()  # it takes printers as the broker hands them over
            else:
                for pid in self.printer_ids:
                    self.open_printer(pid)
        except BaseException:
            self.close()
            raise
        if self.bus is None:
            self._warn_if_anonymous()
        self._idle = threading.Thread(target=self._watch, name="monitor-watch", daemon=True)
        self._idle.start()
        log.info(
            "monitor: model %s (%s engine); printers %s", self.model_id, cfg.monitor.engine, ", ".join(self.printer_ids)
        )
        return self

    def printer_mqtt(self, pid: str) -> MqttConfig:
        """The broker settings of a printer's link: frames waiting beyond the memory bound go to a spool beside its
        records (a backlog after an outage is judged, not dropped)."""
        return self.config.mqtt.model_copy(update={"spool_dir": self.config.monitor.out_dir / pid / ".spool"})

    def open_printer(self, pid: str, link: Link | None = None, holder: Any = None) -> PrinterMonitor:
        """Start judging ``pid``: its printer backend, its link (``link``, else one on the configured broker or
        bus), its handlers. A site worker (monitor.workers) passes an exclusive link of its own and the
        printer's ``holder`` lock, which every handler takes before it touches the printer's records."""
        cfg = self.config
        assert self.policy is not None, "open_printer before start"
        printer = self._given[pid] if pid in self._given else self._make_printer(pid)
        topics = Topics(cfg.mqtt.prefix, pid)
        if link is None:
            link = open_link(self.bus, self.printer_mqtt(pid), service="monitor", topics=topics, version=__version__)
        pm = PrinterMonitor(self, pid, link, printer, self.policy)
        pm.holder = holder
        handlers = ((topics.image, pm.on_frame), (topics.action, pm.on_action), (topics.layer, pm.on_layer_event))
        for topic_filter, handler in handlers:
            link.subscribe(topic_filter, pm.owned(handler))
        self.monitors[pid] = pm
        pm.jobs.read_state()  # the first layers are judged with the printer's state, read here, not in their path
        try:
            link.start()
        except BaseException:
            self.release_printer(pid, publish_offline=False)
            raise
        pm.observers.start()
        return pm

    def release_printer(self, pid: str, *, publish_offline: bool = True) -> None:
        """Stop judging ``pid`` and let go of its record, which stays open for the next holder (a site worker
        handing the printer to another, or losing it): the same as a restart, without the crash."""
        pm = self.monitors.pop(pid, None)
        if pm is None:
            return
        pm.link.close(publish_offline=publish_offline)  # the layer being judged finishes first
        pm.release()
        pm.controller.close()
        if pm.printer is not None and pid not in self._given:
            pm.printer.close()

    def _warn_if_anonymous(self) -> None:
        """Loudly, at start: a broker that lets anyone in lets anyone publish frames and layer events."""
        mqtt = self.config.mqtt
        username, _ = mqtt.credentials()
        if username is None:
            log.warning(
                "monitor: SECURITY: connected to %s without a user name: an anonymous broker lets anyone on the "
                "network publish frames and layer events (control requests still need an operator's signature); "
                "set [mqtt] username and a password, see docs/security.md",
                mqtt.url,
            )
        elif anonymous_allowed(mqtt):
            log.warning(
                "monitor: SECURITY: broker %s also lets in clients without a user name: set allow_anonymous false, "
                "see docs/security.md",
                mqtt.url,
            )

    def _make_printer(self, pid: str) -> Printer | None:
        section = self.config.printers.get(pid)
        if section is None or section.backend == "none":
            return None
        return create_printer(section.backend, pid, **section.options).start()

    def _watch(self) -> None:
        """Read each printer's state (the layers are judged with it; published for the dashboard), close the
        records of jobs that ended (after the grace time) or whose printer went silent."""
        while not self._stop.wait(min(1.0, self.config.monitor.build_idle_close_s)):
            self.tick()

    def tick(self, *, poll: bool | None = None) -> None:
        """One look of the watcher (tests drive it without waiting): the model store, each printer's frames,
        its state (every STATE_POLL_S, at once after an action's outcome, or where ``poll``), the end of jobs."""
        cfg = self.config.monitor
        now = time.monotonic()
        due = now - self._last_poll >= STATE_POLL_S if poll is None else poll
        if due:
            self._last_poll = now
        try:
            self._follow_store()
        except Exception:  # the watcher must outlive a broken model store
            log.exception("monitor: checking the model store failed")
        for pm in list(self.monitors.values()):
            try:
                pm.check_frames()
                if due or pm.jobs.poll_now.is_set():
                    pm.jobs.poll_now.clear()
                    pm.jobs.check_printer()
                build = pm.build
                if build is None:
                    continue
                quiet = time.monotonic() - build.last_seen
                if build.end_reason and quiet >= cfg.job_end_grace_s:
                    pm.close_build("closed", build.job_id)
                elif quiet > cfg.build_idle_close_s:
                    pm.close_build("closed-idle", build.job_id)
            except Exception:  # the watcher must outlive any one printer's trouble
                log.exception("%s: checking for the end of the job failed", pm.printer_id)

    def close(self) -> None:
        self._stop.set()
        if self.site is not None:
            # first out of the site's group: the printers it lets go now go to the other workers, not back to it
            self.site.close()
            for pid in list(self.monitors):
                self.release_printer(pid)
        for pm in list(self.monitors.values()):
            pm.link.close()
            pm.close_build("closed")
            pm.controller.close()
            if pm.printer is not None and pm.printer_id not in self._given:
                pm.printer.close()
        if self.notifier is not None:
            self.notifier.close()
        for segmenter in (self.segmenter, self.shadow):
            if segmenter is not None:
                segmenter.close()
        self.segmenter = self.shadow = None

    def __enter__(self) -> MonitorService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
