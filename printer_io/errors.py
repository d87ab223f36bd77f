"""Exceptions of the printer I/O package. Each message says what was expected and how to fix it.

::

    PrinterIOError
    ├── ConfigError            a setting is missing or invalid (names the key and what is allowed)
    ├── PayloadError           an MQTT message failed validation (names the topic and field)
    ├── FrameTooLarge          an encoded frame exceeds the configured limit
    ├── CaptureError           a camera source could not deliver a frame
    ├── MqttError              the broker cannot be reached or refused us
    │   ├── MqttAuthError      wrong username/password or not authorised
    │   └── PublishRefused     the broker acknowledged a publish with a refusal (its ACL)
    └── PrinterError           a printer backend failed
        ├── PrinterUnreachable     no answer (connection refused, timeout)
        ├── PrinterAuthError       the API key was rejected
        ├── PrinterCommandRefused  the printer answered but refused (e.g. pause while idle)
        ├── PauseNotConfirmed      a pause was sent but the printer never reported Paused
        └── UnsupportedOperation   the backend or firmware cannot do this (e.g. exclude object)
"""

from __future__ import annotations

__all__ = [
    "CaptureError",
    "ConfigError",
    "FrameTooLarge",
    "MqttAuthError",
    "MqttError",
    "PauseNotConfirmed",
    "PayloadError",
    "PrinterAuthError",
    "PrinterCommandRefused",
    "PrinterError",
    "PrinterIOError",
    "PrinterUnreachable",
    "PublishRefused",
    "UnsupportedOperation",
]


class PrinterIOError(Exception):
    """Base class of every error raised by :mod:`printer_io`."""


class ConfigError(PrinterIOError):
    """A setting is missing or invalid."""


class PayloadError(PrinterIOError):
    """A message does not match its schema; ``reason`` is a short machine-readable cause for counters."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class FrameTooLarge(PrinterIOError):
    """An encoded frame is larger than the configured ``max_frame_bytes``."""


class CaptureError(PrinterIOError):
    """A camera source could not deliver a frame."""


class MqttError(PrinterIOError):
    """The MQTT broker cannot be reached or the connection failed."""


class MqttAuthError(MqttError):
    """The broker refused our credentials or client id."""


class PublishRefused(MqttError):
    """The broker acknowledged a publish with a refusal (MQTT 5 PUBACK reason code, e.g. not authorized by
    its ACL); ``topic`` and ``reason`` say which and why."""

    def __init__(self, message: str, topic: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.topic = topic
        self.reason = reason


class PrinterError(PrinterIOError):
    """A printer backend failed."""


class PrinterUnreachable(PrinterError):
    """The printer's server does not answer."""


class PrinterAuthError(PrinterError):
    """The printer's server rejected our credentials."""


class PrinterCommandRefused(PrinterError):
    """The printer answered but refused the command in its current state."""


class PauseNotConfirmed(PrinterError):
    """A pause was requested but the printer did not report ``paused`` in time."""


class UnsupportedOperation(PrinterError):
    """This backend or firmware cannot do the requested operation."""
