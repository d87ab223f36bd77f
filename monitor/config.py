"""The TOML configuration file: one section per component, loaded into validated, frozen models.

An unknown section or key, or a value of the wrong type or range, stops start-up with one line naming
the file, section, key, value and what is allowed. Secrets are never in this file: they come from the
environment or from files it names (``password_file``, ``api_key_file``). ``data/config/layerwatch.toml``
is the documented example; every key is optional.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from monitor.controller import ControllerLimits
from monitor.policy import DEFAULT_POLICY, Policy, Rule, load_policy
from monitor.settings import ConfigFileError, section
from monitor.sources import SIMULATED_CAMERA_SEED
from printer_io.errors import ConfigError
from printer_io.mqtt import MqttConfig
from printer_io.printer import backend_options, backends
from printer_io.topics import validate_printer_id
from printer_io.vocabulary import Severity
from segmentation.imageio import DEFAULT_MAX_PIXELS

__all__ = [
    "Config",
    "ConfigFileError",
    "DashboardSection",
    "MonitorSection",
    "PrinterSection",
    "SecuritySection",
    "SiteSection",
    "load_config",
    "part_user",
    "section",
]

M = TypeVar("M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MonitorSection(_Section):
    out_dir: Path = Path("records")
    engine: Literal["auto", "onnx", "openvino", "torch"] = "auto"  # auto: OpenVINO where installed
    # a model given here is used as it is; without one, the model store's current model (`layerwatch model
    # promote`), watched: a promotion or rollback takes effect at the next layer, without a restart
    model: Path | None = None
    models_dir: Path = Path("models")
    # a candidate run beside the model in use on every layer, acting on nothing: its masks and what it would
    # have done are stored in the record, and the dashboard shows where the two disagree
    shadow_model: Path | None = None
    # drift (monitor.drift): this printer's frames and class areas against where the model stood on them;
    # a drift asks for labels in a "drift" event, nothing retrains by itself. 0 layers: no drift watch
    drift_reference_layers: int = Field(default=30, ge=0, le=10_000)
    drift_window: int = Field(default=20, ge=3, le=10_000)
    threads: int | None = Field(default=None, ge=1, le=256)
    mm_per_px: float = Field(default=0.1, gt=0, le=10)
    layer_thickness_mm: float = Field(default=0.04, gt=0, le=5)
    fsync: bool = False
    build_idle_close_s: float = Field(default=1800.0, gt=0)
    # a job that ended (printer state, or an end event on the layer topic) closes its record once no
    # frame has come for this long (the last layer's frame may still be on its way)
    job_end_grace_s: float = Field(default=5.0, ge=0, le=600)
    # a frame captured longer ago than this (the monitor was down or behind; where the printer reports no layer of
    # its own) is judged and stored, not acted on: the print has moved on. Needs the clocks in step (NTP)
    live_window_s: float = Field(default=300.0, ge=10, le=86_400)
    # a frame or layer event of another job starts it only once the current build has ended or had no frame for
    # this long (and for three of its usual layer intervals): one forged message cannot end a live build.
    # 0: another job starts at once (trusts whoever can publish frames)
    job_switch_quiet_s: float = Field(default=30.0, ge=0, le=86_400)
    max_frame_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1024)
    # each result carries the layer's classes as a PNG of at most this many px a side (OctoPrint's LayerWatch tab
    # lays it over the frame); 0: none
    result_overlay_px: int = Field(default=320, ge=0, le=1024)
    gzip_level: int = Field(default=1, ge=0, le=9)
    # the build plate: propose it from a build's first frame where no [printers.<id>] roi is set
    propose_roi: bool = True
    # the first layers of a build give the camera's fixed lighting, which later frames are corrected by
    reference_layers: int = Field(default=3, ge=0, le=50)
    # frames unlike the model's training data are not judged automatically: a person reviews them
    ood_check: bool = True
    # several monitor workers sharing the site's printers through the broker (monitor.workers, docs/deploy.md):
    # the name of their group, the same in all of them; empty: this monitor judges all its printers itself
    group: str = ""
    worker_id: str = ""  # unique in the group; default: host name and process id
    # a worker gone this long (after the broker noticed) has its printers taken over by the others
    takeover_delay_s: int = Field(default=2, ge=1, le=3600)
    # how often a worker looks for printers no one holds, and hands on one above its share
    worker_check_s: float = Field(default=5.0, ge=0.2, le=3600)

    @field_validator("group", "worker_id")
    @classmethod
    def _topic_level(cls, value: str) -> str:
        try:
            return validate_printer_id(value, "worker group or id") if value else value
        except ConfigError as err:
            raise ValueError(str(err)) from None


class _PartCredentials(_Section):
    """A part's own broker user (``layerwatch up`` starts it): where given, it connects as this user instead of
    ``[mqtt] username``; the password from the file (relative to the config file)."""

    mqtt_username: str | None = Field(default=None, min_length=1, max_length=128)
    mqtt_password_file: Path | None = None


class CameraSection(_PartCredentials):
    """``[printers.<id>.camera]``: the camera ``layerwatch up`` runs for this printer (``layerwatch camera``)."""

    source: Literal["opencv", "folder", "record", "simulator"] = "opencv"
    device: str = Field(default="0", max_length=512)  # opencv: index, RTSP/HTTP URL or video file
    path: Path | None = None  # folder or record sources
    seed: int = SIMULATED_CAMERA_SEED  # simulator
    defects: bool = False  # simulator: the build keeps its pores and warps (else a clean build, spatter only)
    size: int = Field(default=512, ge=16, le=8192)  # simulator
    settle_s: float = Field(default=0.0, ge=0, le=60)
    attempts: int = Field(default=3, ge=1, le=20)
    retry_s: float = Field(default=0.5, ge=0, le=60)
    encoding: Literal["png", "jpeg"] = "png"
    view: Literal["melt", "recoat"] = "melt"  # recoat: a second camera, the powder before exposure


class PrinterSection(_PartCredentials):
    """``[printers.<id>]``: how to reach one printer. ``backend = "none"`` observes without acting.

    Beside the keys below, the table holds the chosen backend's own settings (``url``, ``api_key_file``,
    ...: its options model in printer_io, ``layerwatch printer --help`` lists them); they are validated
    by that model and kept in ``options``. ``mqtt_username`` / ``mqtt_password_file``: the broker user of its
    layer bridge.
    """

    backend: str = "none"
    options: dict[str, Any] = Field(default_factory=dict)
    mm_per_px: float | None = Field(default=None, gt=0, le=10)
    layer_thickness_mm: float | None = Field(default=None, gt=0, le=5)
    object_names: dict[str, str] = Field(default_factory=dict, description="part id -> firmware object name")
    # the build plate as a polygon of (x, y) camera pixels; nothing outside it is judged
    roi: tuple[tuple[float, float], ...] | None = None
    # a frame of the plate before exposure (e.g. after recoating): the camera's fixed lighting, used
    # from a build's first layer instead of learning it from the first layers
    reference_image: Path | None = None
    # false: its layer events come from elsewhere (LayerWatch's OctoPrint plugin, a G-code hook): `up` starts no bridge
    bridge: bool = True
    camera: CameraSection | None = None  # the camera `layerwatch up` runs for it; none: frames come from elsewhere
    recoat_camera: CameraSection | None = None  # a second one for the after-recoat image (view "recoat")

    @model_validator(mode="before")
    @classmethod
    def _backend_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("backend", "none")
        own = {k: v for k, v in data.items() if k in cls.model_fields and k != "options"}
        rest = {k: v for k, v in data.items() if k not in cls.model_fields}
        given = data.get("options") or {}
        if not isinstance(given, dict):
            raise ValueError("options must be a table of the backend's settings")
        rest |= given
        if name == "none":
            if rest:
                raise ValueError(f"backend 'none' takes no settings; remove {', '.join(sorted(rest))}")
            return own
        if name not in backends():
            return data  # the backend field's own check says which names are valid

        try:
            options = backend_options(name, rest)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return {**own, "options": options.model_dump(exclude_defaults=True)}

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v != "none" and v not in backends():
            raise ValueError(f"unknown printer backend; valid: {', '.join(sorted(backends()))}, none")
        return v

    @field_validator("roi")
    @classmethod
    def _roi_polygon(cls, v: tuple[tuple[float, float], ...] | None) -> tuple[tuple[float, float], ...] | None:
        if v is not None and len(v) < 3:
            raise ValueError(f"roi needs at least 3 [x, y] points, got {len(v)}")
        if v is not None and any(c < 0 or c != c for p in v for c in p):
            raise ValueError("roi points are camera pixels: numbers >= 0")
        return v


class SecuritySection(_Section):
    """Who may ask the monitor to move a printer or write a verdict (printer_io.credentials)."""

    # NAME:SECRET lines, readable by the monitor only; LAYERWATCH_OPERATORS_FILE when not set here.
    # Without one the monitor carries out no remote request: only its own policy acts.
    operators_file: Path | None = None
    # an operator's request is refused when signed further than this from the monitor's clock
    signature_window_s: float = Field(default=120.0, ge=5, le=3600)


class NotificationRoute(_Section):
    """``[[notifications.routes]]``: where a printer's actions are told, from which severity on.

    Apprise URLs (Telegram, Discord, e-mail, Slack, Pushover, ntfy, a webhook: ``json://host/path``...) hold
    tokens: they come from a file (``urls_file``, one a line, ``#`` comments) or an environment variable
    (``urls_env``, separated by spaces or lines), never from this config, which every record keeps."""

    urls_file: Path | None = None
    urls_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")
    printers: tuple[str, ...] = ("*",)
    min_severity: Severity = Severity.WARNING
    actions: tuple[str, ...] = ("pause", "cancel", "notify", "gcode", "exclude_object")

    @model_validator(mode="after")
    def _one_source(self) -> NotificationRoute:
        if (self.urls_file is None) == (self.urls_env is None):
            raise ValueError("give exactly one of urls_file or urls_env (the Apprise URLs hold secrets)")
        return self


class NotificationsSection(_Section):
    # where the dashboard is, for the link to the layer in each notification (e.g. "http://farm:8050")
    dashboard_url: str | None = Field(default=None, pattern=r"^https?://[^\s]{1,200}$")
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    routes: tuple[NotificationRoute, ...] = ()


class HomeAssistantSection(_Section):
    """``[homeassistant]``: MQTT discovery (each printer a device: state, job, layer, last severity, last incident,
    and a Pause button). A press becomes a pause request signed with ``operator``'s secret from the operators
    file and goes through the same verification, controller and record as any operator's; give Home
    Assistant's broker user alone the right to publish on ``<prefix>/<printer>/ha/pause``."""

    enabled: bool = False
    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    operator: str = Field(default="homeassistant", pattern=r"^[A-Za-z0-9_.@-]{1,64}$")


class SiteSection(_Section):
    """``[site]``: how the parts of a site reach the broker (``layerwatch up``, docs/deploy.md).

    ``credentials_dir``: every part connects as its own broker user, the one ``layerwatch security broker-config``
    made for it, with the password in ``<credentials_dir>/<user>.password``: ``monitor``, ``dashboard``,
    ``bridge-<printer>``, ``camera-<printer>`` (a part's own ``mqtt_username`` still wins). ``acl_file``: the
    broker's ACL; ``up`` checks against it, before starting anything, that each part's user may publish and
    subscribe where the part must. Both relative to the config file."""

    credentials_dir: Path | None = None
    acl_file: Path | None = None


class DashboardSection(_PartCredentials):
    """``[dashboard]``: the dashboard ``layerwatch up`` starts (its broker user: ``mqtt_username``)."""


#: the broker user each part of a site connects as under ``[site] credentials_dir`` (broker-config's names)
def part_user(part: str, printer: str | None = None) -> str:
    """``monitor``, ``dashboard``, ``bridge-<printer>``, ``camera-<printer>`` (a recoat camera is a camera)."""
    if part in ("monitor", "dashboard", "operator", "homeassistant"):
        return part
    kind = "camera" if part in ("camera", "recoat-camera") else part
    if printer is None:
        raise ValueError(f"the {part} part belongs to a printer: give its id")
    return f"{kind}-{printer}"


class PolicySection(_Section):
    file: Path | None = None
    rules: tuple[Rule, ...] = ()


class Config(_Section):
    mqtt: MqttConfig = MqttConfig()
    monitor: MonitorSection = MonitorSection()
    printers: dict[str, PrinterSection] = Field(default_factory=dict)
    controller: ControllerLimits = ControllerLimits()
    policy: PolicySection = PolicySection()
    security: SecuritySection = SecuritySection()
    notifications: NotificationsSection = NotificationsSection()
    homeassistant: HomeAssistantSection = HomeAssistantSection()
    site: SiteSection = SiteSection()
    dashboard: DashboardSection = DashboardSection()
    source: Path | None = None

    def path(self, value: Path) -> Path:
        """A path of this config: relative ones are relative to the config file's folder."""
        if self.source is not None and not value.is_absolute():
            return self.source.parent / value
        return value

    def part_credentials(self, part: str, printer: str | None = None) -> tuple[str | None, Path | None]:
        """(user, password file) a part of the site connects as, or (None, None) for ``[mqtt]``'s own.
        ``part``: monitor, dashboard, bridge, camera or recoat-camera (the last three with their printer)."""
        own: _PartCredentials | None = None
        if part == "dashboard":
            own = self.dashboard
        elif part in ("bridge", "camera", "recoat-camera") and printer in self.printers:
            section = self.printers[printer]
            own = section if part == "bridge" else section.camera if part == "camera" else section.recoat_camera
        if own is not None and own.mqtt_username is not None:
            password = own.mqtt_password_file
            return own.mqtt_username, self.path(password) if password is not None else None
        if self.site.credentials_dir is not None and part != "monitor":
            user = part_user(part, printer)
            return user, self.path(self.site.credentials_dir) / f"{user}.password"
        return None, None

    def mqtt_for(self, part: str, printer: str | None = None) -> MqttConfig:
        """The ``[mqtt]`` settings a part connects with: its own broker user where the config gives one, and
        every file path relative to the config file."""
        files = {
            k: self.path(v)
            for k in ("password_file", "ca_file", "cert_file", "key_file")
            if (v := getattr(self.mqtt, k)) is not None
        }
        user, password = self.part_credentials(part, printer)
        if user is not None:
            files["password_file"] = password  # type: ignore[assignment]  # None: from the environment
        return self.mqtt.model_copy(update={**files, **({"username": user} if user is not None else {})})

    def operators_file(self) -> Path | None:
        """The operators file: ``[security] operators_file`` (relative to the config file), else the environment."""

        from printer_io.credentials import OPERATORS_FILE_ENV

        path = self.security.operators_file
        if path is None:
            env = os.environ.get(OPERATORS_FILE_ENV)
            return Path(env) if env else None
        if self.source is not None and not path.is_absolute():
            path = self.source.parent / path
        return path

    def resolved_policy(self) -> Policy:
        if self.policy.rules:
            return Policy(rules=self.policy.rules)
        path = self.policy.file or DEFAULT_POLICY
        if self.source is not None and not path.is_absolute() and self.policy.file is not None:
            path = self.source.parent / path
        return load_policy(path)

    def to_record(self) -> dict[str, Any]:
        """The resolved config as written into every build record (secrets are never in it)."""
        return self.model_dump(mode="json", exclude={"source"})


SECTIONS = (
    "mqtt", "monitor", "printers", "controller", "policy", "security", "notifications", "homeassistant", "site",
    "dashboard",
)  # fmt: skip


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigFileError(f"config file {path}: {err.strerror}") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"config file {path} is not valid TOML: {err}") from err
    for name in data:
        if name not in SECTIONS:
            raise ConfigFileError(f"{path}: unknown section [{name}]; known sections: {', '.join(SECTIONS)}")
    parts: dict[str, Any] = {"source": path}
    models: dict[str, type[BaseModel]] = {
        "mqtt": MqttConfig, "monitor": MonitorSection, "controller": ControllerLimits, "policy": PolicySection,
        "security": SecuritySection, "notifications": NotificationsSection, "homeassistant": HomeAssistantSection,
        "site": SiteSection, "dashboard": DashboardSection,
    }  # fmt: skip
    for name, model in models.items():
        if name in data:
            parts[name] = section(model, data[name], name, str(path))
    printers = data.get("printers", {})
    if not isinstance(printers, dict):
        raise ConfigFileError(f"{path}: [printers] must be a table of [printers.<id>] tables")
    parts["printers"] = {}
    for pid, table in printers.items():
        try:
            validate_printer_id(pid)
        except ConfigError as err:
            raise ConfigFileError(f"{path}: [printers.{pid}] {err}") from None
        parts["printers"][pid] = section(PrinterSection, table, f"printers.{pid}", str(path))
    config = Config(**parts)
    # [mqtt]'s files and the printers' (an api_key_file, a reference image) are relative to the config file
    printers_resolved = {
        pid: sec.model_copy(
            update={
                "options": {k: config.path(v) if isinstance(v, Path) else v for k, v in sec.options.items()},
                **({"reference_image": config.path(sec.reference_image)} if sec.reference_image else {}),
            }
        )
        for pid, sec in config.printers.items()
    }
    config = config.model_copy(update={"mqtt": config.mqtt_for("monitor"), "printers": printers_resolved})
    try:
        config.resolved_policy()  # a bad policy file stops start-up too
    except ConfigFileError as err:
        raise ConfigFileError(f"{path}: [policy] file: {err}") from None
    return config
