"""Pause confirmation and escalation; OctoPrint client errors at the boundary (httpx's mock transport)."""

from __future__ import annotations

import json

import httpx
import pytest

from printer_io.errors import (
    ConfigError,
    PauseNotConfirmed,
    PrinterAuthError,
    PrinterCommandRefused,
    PrinterError,
    PrinterUnreachable,
)
from printer_io.octoprint import OctoPrintPrinter
from printer_io.printer import PrinterState, confirm_pause


class FakePrinter:
    """States returned in order, the last one repeating; counts pause requests."""

    def __init__(self, *states: PrinterState, fail_sends: int = 0) -> None:
        self.states = list(states)
        self.sent = 0
        self.fail_sends = fail_sends

    def send(self) -> None:
        self.sent += 1
        if self.sent <= self.fail_sends:
            raise PrinterUnreachable("timeout")

    def state(self) -> PrinterState:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def test_acknowledged_then_paused() -> None:
    p = FakePrinter(PrinterState.PRINTING, PrinterState.PAUSING, PrinterState.PAUSING, PrinterState.PAUSED)
    outcome = confirm_pause(p.send, p.state, timeout_s=5, poll_s=0.001)
    assert p.sent == 1 and outcome.attempts == 1
    assert outcome.acknowledged_s is not None and outcome.acknowledged_s <= outcome.paused_s


def test_an_unconfirmed_pause_is_sent_again_then_escalated() -> None:
    p = FakePrinter(PrinterState.PRINTING)
    retries: list[tuple[int, str]] = []
    with pytest.raises(PauseNotConfirmed, match=r"not confirmed after 3 attempt.*last state printing"):
        confirm_pause(
            p.send, p.state, timeout_s=0.05, poll_s=0.005, attempts=3, on_retry=lambda a, w: retries.append((a, w))
        )
    assert p.sent == 3
    assert [a for a, _ in retries] == [1, 2] and "no 'paused' within" in retries[0][1]


def test_a_failed_send_is_retried() -> None:
    p = FakePrinter(PrinterState.PAUSED, fail_sends=1)
    outcome = confirm_pause(p.send, p.state, timeout_s=1, poll_s=0.001, attempts=2)
    assert p.sent == 2 and outcome.attempts == 2


def test_a_printer_that_is_not_printing_is_not_paused() -> None:
    p = FakePrinter(PrinterState.IDLE)
    with pytest.raises(PauseNotConfirmed, match="the printer is idle, not printing"):
        confirm_pause(p.send, p.state, timeout_s=1, poll_s=0.001)


ALL = ["STATUS", "PRINT", "CONTROL", "FILES_DOWNLOAD"]


def _octoprint(handler: object, permissions: list[str] = ALL, **kw: object) -> OctoPrintPrinter:
    def with_user(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/currentuser":
            return httpx.Response(200, json={"name": "lw", "permissions": permissions, "groups": []})
        return handler(request)  # type: ignore[operator, no-any-return]

    transport = httpx.MockTransport(with_user)
    return OctoPrintPrinter("op", url="http://octopi.local", api_key="KEY123", transport=transport, **kw)  # type: ignore[arg-type]


def test_octoprint_older_than_1_11_6_is_refused() -> None:
    p = _octoprint(lambda r: httpx.Response(200, json={"server": "1.11.5", "api": "0.1"}))
    with pytest.raises(ConfigError, match=r"is 1\.11\.5; LayerWatch needs 1\.11\.6 or newer"):
        p.start()


def test_the_api_key_travels_in_the_header_never_the_query() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/version":
            return httpx.Response(200, json={"server": "1.11.8"})
        if request.url.path == "/api/job" and request.method == "POST":
            return httpx.Response(204)
        return httpx.Response(200, json={"state": {"text": "Paused", "flags": {"paused": True, "operational": True}}})

    p = _octoprint(handler).start()
    p.pause(timeout_s=1)
    assert all(r.headers["X-Api-Key"] == "KEY123" and "KEY123" not in str(r.url) for r in seen)
    body = json.loads(next(r for r in seen if r.method == "POST").content)
    assert body == {"command": "pause", "action": "pause"}  # never the toggling form


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (401, PrinterAuthError, "rejected the API key"),
        (403, PrinterAuthError, "lacks the PRINT permission"),
        (409, PrinterCommandRefused, "Printer is not operational"),
    ],
)
def test_octoprint_errors_are_translated(status: int, error: type[Exception], words: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/version":
            return httpx.Response(200, json={"server": "1.11.8"})
        return httpx.Response(status, json={"error": "Printer is not operational"})

    p = _octoprint(handler).start()
    with pytest.raises(error, match=words):
        p.cancel()


def test_a_missing_api_key_says_where_to_put_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAYERWATCH_OCTOPRINT_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"set \$LAYERWATCH_OCTOPRINT_API_KEY or name a file that holds it"):
        OctoPrintPrinter("op", url="http://x")


def test_octoprint_without_status_or_print_is_refused_and_missing_extras_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def version(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"server": "1.11.8"})

    with pytest.raises(ConfigError, match=r"lacks PRINT \(pause, resume and cancel the job\)"):
        _octoprint(version, permissions=["STATUS"]).start()
    p = _octoprint(version, permissions=["STATUS", "PRINT"]).start()
    assert p.missing_permissions == ["CONTROL", "FILES_DOWNLOAD"]
    assert "lacks CONTROL" in caplog.text


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html><body>Welcome to nginx</body></html>", headers={"content-type": "text/html"}),
        httpx.Response(404, text="<!DOCTYPE html><html>Not Found</html>", headers={"content-type": "text/html"}),
    ],
)
def test_a_server_that_is_not_octoprint_gets_one_line(answer: httpx.Response) -> None:
    p = _octoprint(lambda r: answer)
    with pytest.raises(PrinterError) as info:
        p.start()
    text = str(info.value)
    assert "check the URL" in text or "not OctoPrint" in text
    assert "<html" not in text and "\n" not in text
