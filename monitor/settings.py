"""Validating a TOML table against a settings model, with errors a person can act on.

Shared by the config file (monitor.config) and the policy file (monitor.policy): every error names the
file, the section, the key and the value, and says what is wrong.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["EXIT_CONFIG", "ConfigFileError", "section"]

M = TypeVar("M", bound=BaseModel)

#: the exit status of a command whose configuration is wrong (a bad key, a missing secret file, credentials the
#: broker refuses): no restart can fix it, so `layerwatch up` does not restart a part that ends so (EX_CONFIG)
EXIT_CONFIG = 78


class ConfigFileError(Exception):
    """The configuration file is missing, not TOML, or has a bad section/key/value."""


def section(model: type[M], table: dict[str, Any], name: str, where: str) -> M:
    """Validate one table; the error names the file, the section, the key and what is wrong."""
    try:
        return model.model_validate(table)
    except ValidationError as err:
        raise ConfigFileError(_explain(err, model, name, where)) from None


def _explain(err: ValidationError, model: type[BaseModel], name: str, where: str) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "(section)"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        if len(loc) == 1:
            allowed = ", ".join(sorted(model.model_fields))
            return f"{where}: [{name}] has no key {key!r}; allowed keys: {allowed}"
        return f"{where}: [{name}] has no key {key!r}"
    value = first.get("input")
    if isinstance(value, dict | list) or (first["type"] == "value_error" and not loc):
        return f"{where}: [{name}] {key}: {message}"
    return f"{where}: [{name}] {key} = {value!r}: {message}"
