"""MQTT over TLS with a CA file and client certificates, against a real Mosquitto TLS listener."""

from __future__ import annotations

import getpass
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Mosquitto, free_port, stop, wait_port

from printer_io.errors import MqttError
from printer_io.messages import LayerEvent
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.topics import Topics

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=LayerWatch test CA", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    return d


@pytest.fixture(scope="module")
def tls_broker(pki: Path) -> Iterator[int]:
    broker = Mosquitto(pki)  # for its executable and log path; the config is TLS-only
    port = free_port()
    conf = pki / "tls.conf"
    conf.write_text(
        f"user {getpass.getuser()}\n"
        f"log_dest file {pki / 'tls.log'}\n"
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
    )
    proc = subprocess.Popen([broker.exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_port(port, 10, proc, pki / "tls.log")
    yield port
    stop(proc)


def test_tls_with_client_certificate(pki: Path, tls_broker: int) -> None:
    topics = Topics("layerwatch", "tls-printer")
    cfg = MqttConfig(
        url=f"mqtts://127.0.0.1:{tls_broker}",
        ca_file=pki / "ca.crt",
        cert_file=pki / "client.crt",
        key_file=pki / "client.key",
        connect_timeout_s=5,
    )
    got: list[int] = []
    monitor = MqttLink(cfg, service="monitor", topics=topics)
    monitor.subscribe(topics.layer, lambda t, p: got.append(LayerEvent.from_json(p, t).layer))
    with monitor.start(), MqttLink(cfg, service="bridge", topics=topics) as bridge:
        bridge.publish(
            topics.layer, LayerEvent(printer=topics.printer, job_id="j", layer=5, z_mm=1.2).to_json(), wait_s=5
        )
        end = time.monotonic() + 5
        while not got and time.monotonic() < end:
            time.sleep(0.05)
    assert got == [5]


def test_tls_without_the_client_certificate_is_refused(pki: Path, tls_broker: int) -> None:
    cfg = MqttConfig(url=f"mqtts://127.0.0.1:{tls_broker}", ca_file=pki / "ca.crt", connect_timeout_s=3)
    with pytest.raises(MqttError, match=r"TLS handshake with mqtts://127\.0\.0\.1:\d+ failed"):
        MqttLink(cfg, service="camera", topics=Topics("layerwatch", "tls-printer")).start()
