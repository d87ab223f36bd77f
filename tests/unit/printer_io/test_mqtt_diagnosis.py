"""Why a first connection failed, in one line, against servers that are not a working broker (no broker needed)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from printer_io.mqtt import MqttConfig, MqttError, MqttLink
from printer_io.topics import Topics


@contextmanager
def _server(close_at_once: bool) -> Iterator[int]:
    """A TCP listener on a free port that closes each connection as soon as it has read from it (a broker
    shutting down), or keeps it open without a word (something that is not an MQTT broker)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(1024)
            if close_at_once:
                conn.close()
            else:
                held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        for conn in held:
            conn.close()


def _start(port: int) -> None:
    config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", connect_timeout_s=1.5)
    MqttLink(config, service="x", topics=Topics("layerwatch", "p1")).start()


def test_a_broker_that_closes_the_connection_before_accepting_it_is_said_so() -> None:
    with _server(close_at_once=True) as port, pytest.raises(MqttError) as err:
        _start(port)
    assert str(err.value).startswith(f"MQTT broker mqtt://127.0.0.1:{port} closed the connection before accepting it")
    assert "shutting down or restarting" in str(err.value)


def test_a_port_that_never_answers_mqtt_is_not_called_a_closing_broker() -> None:
    with _server(close_at_once=False) as port, pytest.raises(MqttError) as err:
        _start(port)
    assert "(the port is open): is it an MQTT broker" in str(err.value)
