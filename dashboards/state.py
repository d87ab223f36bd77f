"""The dashboard's state on the server: its options, the records it may show, the services' status and
the operator's link to the monitor. The browser only ever names a record by the id this side gave it."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from monitor.record import RecordError, RecordReader, build_records, is_build_record
from printer_io.messages import MAX_STROKE_POINTS, MAX_STROKES, ActionMessage, LabelStroke, PrinterStateMessage
from printer_io.mqtt import MqttConfig
from printer_io.vocabulary import ActionKind, ActionState, Severity, Verdict

log = logging.getLogger(__name__)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class DashboardOptions:
    record: Path | None = None
    records: Path | None = None
    broker: str | None = None  # a URL, with the environment's broker user ($LAYERWATCH_MQTT_USERNAME...)
    mqtt: MqttConfig | None = None  # or the whole [mqtt] settings, with the dashboard's own user
    models_dir: Path | None = None  # the model store: a fine-tuned model's figures on the frames it held out
    operators: Mapping[str, str] | None = None  # operator name -> secret (the operators file); None: read-only
    title: str = "LayerWatch"

    def broker_config(self) -> MqttConfig | None:
        """The broker settings the dashboard connects with (None: no broker, read-only, no live status)."""
        from printer_io.mqtt import MqttConfig

        if self.mqtt is not None:
            return self.mqtt.model_copy(update={"url": self.broker}) if self.broker else self.mqtt
        return MqttConfig(url=self.broker) if self.broker else None


class ServiceStatus:
    """Retained status of every service and each printer's own state, from the broker (``<prefix>/+/status/+``:
    the services' online, degraded or offline; ``status/printer``, the printer's state as the monitor reads it)."""

    def __init__(self, mqtt: MqttConfig) -> None:
        from printer_io.mqtt import MqttLink
        from printer_io.topics import Topics

        # (printer, service) -> (state, time, whether this dashboard saw it go offline: then the time is the receipt's)
        self.status: dict[tuple[str, str], tuple[str, float, bool]] = {}
        self.problems: dict[tuple[str, str], str] = {}  # (printer, service) -> what fails while it is degraded
        self.printers: dict[str, PrinterStateMessage] = {}  # printer -> its own state, as the monitor last read it
        self.workers: dict[str, str] = {}  # printer -> the worker of a group that holds it (monitor --group)
        self.refused = ""  # why the broker refused this dashboard's user, if it did
        config = mqtt.model_copy(update={"connect_timeout_s": 5})
        # a unique, clean session: two dashboards on one broker must not take each other's connection over
        self.link = MqttLink(
            config, service="dashboard-status", topics=Topics(config.prefix, "dashboard"), ephemeral=True
        )
        self.link.subscribe(f"{config.prefix}/+/status/+", self._on_status)

    def _on_status(self, topic: str, payload: bytes) -> None:
        from printer_io.messages import StatusMessage

        parts = topic.split("/")
        if parts[-1] == "printer":
            state = PrinterStateMessage.from_json(payload, topic)
            self.printers[parts[-3]] = state
            return
        msg = StatusMessage.from_json(payload, topic)
        key = (parts[-3], parts[-1])
        # a last will carries the time its connection was made, not the time it died: a service seen online
        # here and then offline went down when the message came; one found offline is dated by its message
        seen_online = self.status.get(key, ("", 0.0, False))[0] in ("online", "degraded")
        went = msg.state == "offline" and seen_online
        self.status[key] = (msg.state, time.time() if went else msg.time, went)
        self.problems[key] = msg.problem
        if parts[-1] == "monitor":
            self.workers[parts[-3]] = msg.worker if msg.state != "offline" else ""

    def start(self) -> ServiceStatus:
        from printer_io.errors import MqttAuthError

        try:
            self.link.start()
        except MqttAuthError as err:  # no operator controls either: the same user would send them
            self.refused = str(err)
            log.warning("dashboard: %s", err)
        except Exception as err:  # the page still works from the records; it says why status is missing
            log.warning("dashboard: no service status from the broker: %s", err)
        return self

    def describe(self, printer: str) -> str:
        """The printer's services that are offline or degraded (and why), or the worker that judges it where
        workers share the site; empty when all is well."""
        down = []
        for (p, svc), (state, t, went) in sorted(self.status.items()):
            if p != printer:
                continue
            at = time.strftime("%H:%M:%S", time.localtime(t))
            if state == "offline":
                down.append(f"{svc} offline since {at}" if went else f"{svc} offline (its last status is of {at})")
            elif state == "degraded":
                down.append(f"{svc} degraded: {self.problems.get((p, svc)) or 'see its log'}")
        if down:
            return "; " + ", ".join(down)
        worker = self.workers.get(printer)
        return f"; judged by worker {worker}" if worker else ""

    def printer_state(self, printer: str) -> PrinterStateMessage | None:
        """The printer's own state as the monitor last read it (None: no monitor has said yet)."""
        return self.printers.get(printer)

    def close(self) -> None:
        self.link.close()


def learnt_text(models_dir: Path | None, model: Mapping[str, Any]) -> str:
    """``; model X learnt your frames: ...``: a promoted fine-tune's figures on the labelled frames it held out,
    before (its base) and after; empty where the record's model is none of those."""
    sha = str(model.get("sha256") or "")
    if models_dir is None or len(sha) < 12 or not models_dir.is_dir():
        return ""
    for folder in models_dir.glob(f"*-{sha[:12]}"):
        try:
            held = json.loads((folder / "holdout.json").read_text())
            from segmentation.finetune import holdout_line

            return f"; model {folder.name} on the {held['frames']} labelled frames it held out: {holdout_line(held)}"
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return ""


def printer_state_text(state: PrinterStateMessage | None, now: float | None = None) -> str:
    """``printer paused at layer 12 (OctoPrint, 3 s ago)``: the printer's own word, with its age."""
    if state is None:
        return ""
    age = max(0.0, (now if now is not None else time.time()) - state.time)
    when = f"{age:.0f} s ago" if age < 120 else time.strftime("at %H:%M:%S", time.localtime(state.time))
    where = f" at layer {state.layer}" if state.layer is not None and state.state != "idle" else ""
    by = f"{state.backend}, " if state.backend else ""
    return f"printer {state.state}{where} ({by}{when})"


class Records:
    """Open readers by path, refreshed on demand; a record that cannot be read gives a message, not an error."""

    def __init__(self, opts: DashboardOptions) -> None:
        self.opts = opts
        self._readers: dict[Path, RecordReader] = {}
        self._ids: dict[str, Path] = {}
        self._thumbs: dict[tuple[Path, int], str] = {}
        self._farm_rows: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}  # by file change stamp
        self._lock = threading.Lock()

    def paths(self) -> list[Path]:
        if self.opts.record is not None:
            return [self.opts.record]
        root = self.opts.records
        if root is None or not root.is_dir():
            return []
        return sorted(build_records(root, recursive=True), key=lambda p: p.stat().st_mtime, reverse=True)

    def record_id(self, path: Path) -> str:
        """The id the page knows a record by: the browser names records by these ids, never by paths."""
        rid = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        self._ids[rid] = path
        return rid

    def resolve(self, rid: str) -> Path:
        """The record behind an id the page sent; RecordError for any id this dashboard did not give out."""
        path = self._ids.get(rid)
        if path is None:
            for p in self.paths():  # the list may have grown since the page asked
                self.record_id(p)
            path = self._ids.get(rid)
        if path is None:
            raise RecordError(f"{str(rid)[:40]!r} is not a record of this dashboard")
        return self.allowed(path)

    def newest_per_printer(self) -> dict[str, Path]:
        """Each printer's newest record (the folder a record is in names its printer)."""
        out: dict[str, Path] = {}
        for p in self.paths():  # newest first
            out.setdefault(p.parent.name if self.opts.record is None else "record", p)
        return dict(sorted(out.items()))

    def find(self, printer: str, name: str) -> Path | None:
        """The record of ``printer`` called ``name`` (a link from a notification or the farm view)."""
        ours = (p for p in self.paths() if p.name == name and (self.opts.record or p.parent.name == printer))
        return next(ours, None)

    def farm(self, services: ServiceStatus | None) -> list[dict[str, Any]]:
        """Every printer at a glance, from its newest record: state, job, layer, last severity, last incident."""
        rows = []
        for printer, path in self.newest_per_printer().items():
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = (0, 0)
            cached = self._farm_rows.get(path)
            if cached is not None and cached[0] == stamp and "error" not in cached[1]:
                row = dict(cached[1])  # the record has not changed since: nothing to read
            else:
                row = self._farm_row(printer, path)
                self._farm_rows[path] = (stamp, row)
            row["services"] = services.describe(printer).lstrip("; ") if services is not None else None
            own = services.printer_state(printer) if services is not None else None
            if own is not None:  # the printer's own state and layer, live; the record's state beside it
                row["printer_state"] = printer_state_text(own)
                row["live_layer"] = own.layer
            rows.append(row)
        return rows

    def _farm_row(self, printer: str, path: Path) -> dict[str, Any]:
        row: dict[str, Any] = {"printer": printer, "record": path.name, "id": self.record_id(path)}
        try:
            r = self.reader(path)
            stored = r.stored_layers()
            layers = r.layers()
            last = int(stored.max()) if len(stored) else None
            row |= {"job": str(r.attrs.get("layerwatch/job_id", "")), "state": r.state, "layer": last}
            if last is not None and "severity" in (layers.dtype.names or ()):
                row["severity"] = str(Severity.from_index(int(layers[last]["severity"])))
            incidents = [a for a in r.table("actions") if a["incident"] and a["state"] == "requested"]
            if incidents:
                a = incidents[-1]
                row["incident"] = {"layer": int(a["layer"]), "action": a["action"], "rule": a["rule"]}
                row["thumbnail"] = self._thumbnail(path, r, int(a["layer"]))
        except (RecordError, OSError, KeyError, RuntimeError, IndexError) as err:
            self.drop(path)
            row["error"] = f"cannot be read right now ({err})"
        return row

    def _thumbnail(self, path: Path, r: RecordReader, layer: int) -> str:
        from dashboards.render import overlay_png

        key = (path, layer)
        if key not in self._thumbs:
            if layer not in {int(k) for k in r.stored_layers()}:
                return ""
            self._thumbs[key] = overlay_png(r.image(layer), r.mask(layer), [1, 2, 3, 4], 0.55, max_px=120)
            while len(self._thumbs) > 256:
                self._thumbs.pop(next(iter(self._thumbs)))
        return self._thumbs[key]

    def actions(self, rid: str | None) -> list[dict[str, Any]]:
        """The record's action rows; none when there is no record or it cannot be read (the status says why)."""
        if not rid:
            return []
        try:
            return self.reader(self.resolve(rid)).table("actions")
        except (RecordError, OSError, KeyError):
            return []

    def drop(self, which: str | Path) -> None:
        """Forget a reader (by record id or path) after a read error: the next request opens the record afresh."""
        path = self._ids.get(which, Path(which)) if isinstance(which, str) else which
        with self._lock:
            r = self._readers.pop(path, None)
        if r is not None:
            try:
                r.close()
            except Exception as err:  # closing a broken handle must not break the page
                log.debug("closing the reader of %s: %s", path, err)

    def close(self) -> None:
        for path in list(self._readers):
            self.drop(path)

    def allowed(self, path: str | Path) -> Path:
        """``path`` if it is one of the records this dashboard lists (``--record``, or a file under
        ``--records``), else RecordError: the browser chooses from the server's list, it never names a file."""
        chosen = Path(path)
        if self.opts.record is not None:
            ok = chosen == self.opts.record
        else:
            root = self.opts.records
            ok = (
                root is not None
                and is_build_record(chosen)
                and chosen.resolve().is_relative_to(root.resolve())
                and chosen.is_relative_to(root)
                and chosen.is_file()
            )
        if not ok:
            raise RecordError(f"{str(path)[:200]!r} is not a record of this dashboard")
        return chosen

    def reader(self, path: Path) -> RecordReader:
        path = self.allowed(path)
        with self._lock:
            r = self._readers.get(path)
            if r is not None and r.stale():  # recovered after a crash, or continued since it was closed
                r.close()
                r = None
            if r is None:
                r = RecordReader(path)
                self._readers[path] = r
            else:
                try:
                    r.refresh()
                except (OSError, KeyError, RuntimeError):
                    r.close()
                    r = RecordReader(path)
                    self._readers[path] = r
            return r

    def stored_layer(self, rid: str, layer: int) -> tuple[RecordReader, Any] | None:
        """The reader of the record the page calls ``rid`` and its layer table, or None where ``layer`` has no
        stored frame (yet). Raises what :meth:`resolve` and :meth:`reader` raise for a record that cannot be read."""
        r = self.reader(self.resolve(rid))
        rows = r.layers()
        return (r, rows) if layer < len(rows) and rows[layer]["stored"] else None


class ControlLink:
    """One MQTT link per printer, opened on the first command, for operator actions."""

    def __init__(self, mqtt: MqttConfig) -> None:
        self.url = mqtt.url
        self.config = mqtt.model_copy(update={"connect_timeout_s": 5})
        self._links: dict[str, Any] = {}
        self._lock = threading.Lock()

    def publish(self, printer: str, payload: bytes) -> None:
        from printer_io.mqtt import MqttLink
        from printer_io.topics import Topics

        with self._lock:
            link = self._links.get(printer)
            if link is None:
                topics = Topics(self.config.prefix, printer)
                link = MqttLink(self.config, service="dashboard", topics=topics, ephemeral=True).start()
                self._links[printer] = link
        link.publish(link.topics.action, payload, wait_s=5)

    def close(self) -> None:
        for link in self._links.values():
            link.close()


def _operator_send(
    link: ControlLink,
    records: Records,
    path: str | None,
    operators: Mapping[str, str],
    make: Callable[[str, RecordReader], ActionMessage | str],
) -> str:
    """Sign ``make(printer, reader)``'s request as the logged-in operator and send it; what happened, in words
    (``make`` returns a string instead of a request when there is nothing to send)."""
    from flask import request

    from printer_io.credentials import Credential, sign

    user = request.authorization.username if request.authorization else None
    if not user or user not in operators:
        return "log in as an operator to send commands"
    if not path:
        return "open a record first"
    try:
        reader = records.reader(records.resolve(path))
        printer = str(reader.attrs["layerwatch/printer"])
        msg = make(printer, reader)
    except (RecordError, OSError, KeyError) as err:
        return f"cannot tell which printer this record belongs to: {err}"
    if isinstance(msg, str):
        return msg
    msg = sign(msg, Credential(user, operators[user]))  # the monitor verifies it and records this operator
    try:
        link.publish(printer, msg.to_json())
    except Exception as err:  # the page says so in words; the server goes on
        return f"could not send to the broker {link.url}: {err}"
    return f"sent at {time.strftime('%H:%M:%S')}: "


def send_request(
    link: ControlLink, records: Records, which: Any, path: str | None, incident: str | None,
    operators: Mapping[str, str],
) -> str:  # fmt: skip
    """A button's request: pause, resume, a verdict on an incident, the plate outline."""
    action = {
        "btn-pause": ActionKind.PAUSE,
        "btn-resume": ActionKind.RESUME,
        "btn-false": ActionKind.FEEDBACK,
        "btn-confirmed": ActionKind.FEEDBACK,
        "btn-roi": ActionKind.ROI,
    }[which]
    verdict: Verdict | Literal[""]
    verdict = {"btn-false": Verdict.FALSE_ALARM, "btn-confirmed": Verdict.CONFIRMED_DEFECT}.get(which, "")

    def make(printer: str, reader: RecordReader) -> ActionMessage | str:
        roi = reader.json_attr("roi") if "layerwatch/roi" in reader.attrs else None
        if action == "feedback" and not incident:
            return "choose an incident first"
        if action == "roi" and not (roi and roi.get("points")):
            return "this record has no plate outline to confirm (the monitor judges the whole frame)"
        return ActionMessage(
            printer=printer,
            action=action,
            state=ActionState.REQUESTED,
            request_id=f"dashboard:{uuid.uuid4().hex[:12]}",
            verdict=verdict,
            incident=incident or "",
            reason="from the dashboard",
            detail=json.dumps(roi["points"]) if action == "roi" and roi else "",
        )

    said = _operator_send(link, records, path, operators, make)
    if not said.startswith("sent"):
        return said
    what = {"feedback": f"{verdict.replace('_', ' ')} for {incident}", "roi": "the plate outline"}.get(action, action)
    return f"{said}{what}; the monitor carries it out and records it"


def strokes_from_shapes(shapes: list[Any], width: int, height: int, display_px: int) -> list[LabelStroke]:
    """The operator's drawing on the label canvas (plotly shapes in image px: open paths are brush lines,
    closed ones regions; the colour says the label) as strokes the monitor takes. A shape of an unknown
    colour or with no point inside the frame is dropped; long paths are thinned to the points a stroke holds."""
    from dashboards.render import LABEL_BY_COLOR

    strokes: list[LabelStroke] = []
    scale = width / min(display_px, width)  # screen px of the canvas -> frame px
    for shape in shapes[:MAX_STROKES] if isinstance(shapes, list) else []:
        if not isinstance(shape, dict) or not isinstance(shape.get("path"), str):
            continue
        line = shape.get("line") or {}
        label = LABEL_BY_COLOR.get(str(line.get("color", "")).lower())
        numbers = [float(v) for v in _NUMBER.findall(shape["path"][: 64 * 1024])]
        pairs = zip(numbers[0::2], numbers[1::2], strict=False)  # an odd count leaves the last number out
        points = [(min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)) for x, y in pairs]
        if label is None or not points:
            continue
        step = -(-len(points) // MAX_STROKE_POINTS)
        points = points[::step]
        closed = shape["path"].rstrip().upper().endswith("Z") and len(points) >= 3
        brush = max(1.0, min(512.0, float(line.get("width") or 1) * scale))
        strokes.append(LabelStroke(kind="region" if closed else "brush", label=label, width=brush, points=points))
    return strokes


def send_labels(
    link: ControlLink, records: Records, path: str | None, layer: int | None, strokes: list[LabelStroke],
    operators: Mapping[str, str],
) -> str:  # fmt: skip
    """The operator's strokes on a layer, to the monitor, which stores them in the record."""
    if layer is None:
        return "choose a layer first"
    if not strokes:
        return "nothing to save: draw on the layer first (brush or region), or mark the whole frame"

    def make(printer: str, reader: RecordReader) -> ActionMessage | str:
        return ActionMessage(
            printer=printer,
            action=ActionKind.LABEL,
            state=ActionState.REQUESTED,
            request_id=f"dashboard:{uuid.uuid4().hex[:12]}",
            job_id=str(reader.attrs["layerwatch/job_id"]),
            layer=int(layer),
            labels=strokes,
            reason="from the dashboard",
        )

    said = _operator_send(link, records, path, operators, make)
    if not said.startswith("sent"):
        return said
    return f"{said}{len(strokes)} label stroke(s) on layer {layer}; the monitor stores them in the record"
