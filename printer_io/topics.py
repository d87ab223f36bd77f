"""The MQTT topic tree, built in one place (contract: ../shared/design.md, docs/mqtt.md).

``<prefix>/<printer>/<kind>`` with kind one of ``layer``, ``image``, ``result``, ``action`` and ``event``
(warnings and errors of the services: capture failed, frame too large, pause not confirmed), and
``<prefix>/<printer>/status/<service>`` for the retained online/offline status of each service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from printer_io.errors import ConfigError

__all__ = ["Kind", "Topics", "validate_printer_id"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Kind(StrEnum):
    LAYER = "layer"
    IMAGE = "image"
    RESULT = "result"
    ACTION = "action"
    STATUS = "status"
    EVENT = "event"


def validate_printer_id(value: str, what: str = "printer id") -> str:
    """Printer ids and prefixes become topic levels: no ``/``, ``+``, ``#`` or spaces."""
    if not _ID.match(value):
        raise ConfigError(f"{what} {value!r} is not usable in an MQTT topic: use 1-64 letters, digits, '_', '.' or '-'")
    return value


@dataclass(frozen=True)
class Topics:
    """Topic names of one printer. ``Topics("layerwatch", "p1").layer == "layerwatch/p1/layer"``."""

    prefix: str = "layerwatch"
    printer: str = "printer"

    def __post_init__(self) -> None:
        for level in self.prefix.split("/"):
            validate_printer_id(level, "topic prefix level")
        validate_printer_id(self.printer)

    def topic(self, kind: Kind) -> str:
        return f"{self.prefix}/{self.printer}/{kind.value}"

    @property
    def layer(self) -> str:
        return self.topic(Kind.LAYER)

    @property
    def image(self) -> str:
        return self.topic(Kind.IMAGE)

    @property
    def result(self) -> str:
        return self.topic(Kind.RESULT)

    @property
    def action(self) -> str:
        return self.topic(Kind.ACTION)

    def status(self, service: str) -> str:
        """Retained status of one service: ``<prefix>/<printer>/status/<service>``.

        One retained topic per service, because a retained topic holds one message and several services
        (camera, bridge, monitor) serve the same printer. ``<prefix>/<printer>/status/+`` lists them all.
        """
        return f"{self.topic(Kind.STATUS)}/{validate_printer_id(service, 'service name')}"

    @property
    def event(self) -> str:
        return self.topic(Kind.EVENT)

    @property
    def statuses(self) -> str:
        """Filter for the status of every service of this printer."""
        return f"{self.topic(Kind.STATUS)}/+"
