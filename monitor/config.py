"""The TOML configuration file: one section per component, loaded into validated, frozen models.

An unknown section or key, or a value of the wrong type or range, stops start-up with one line naming
the file, section, key, value and what is allowed. Secrets are never in this file: they come from the
environment or from files it names (``password_file``, ``api_key_file``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from printer_io.mqtt import MqttConfig

__all__ = ["Config", "ConfigFileError", "load_config", "section"]

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(Exception):
    """The configuration file is missing, not TOML, or has a bad section/key/value."""


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    source: Path | None = None


SECTIONS: dict[str, type[BaseModel]] = {"mqtt": MqttConfig}


def section(model: type[M], table: dict[str, Any], name: str, where: str) -> M:
    try:
        return model.model_validate(table)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(model.model_fields))
            raise ConfigFileError(f"{where}: [{name}] has no key {key!r}; allowed keys: {allowed}") from None
        raise ConfigFileError(f"{where}: [{name}] {key} = {first.get('input')!r}: {first['msg']}") from None


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
    mqtt = section(MqttConfig, data.get("mqtt", {}), "mqtt", str(path))
    return Config(mqtt=mqtt, source=path)
