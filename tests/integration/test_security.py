"""``layerwatch security``: the generated broker set-up holds against a real Mosquitto, and the check reports
what stands open (docs/security.md, item 2)."""

from __future__ import annotations

import getpass
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from peers import Mosquitto, free_port, require, stop, wait_port

from monitor.cli import main
from printer_io.errors import MqttAuthError, PublishRefused
from printer_io.mqtt import MqttConfig, MqttLink, anonymous_allowed
from printer_io.topics import Topics

pytestmark = [pytest.mark.integration]


def _as(url: str, out: Path, user: str, printer: str) -> MqttLink:
    config = MqttConfig(url=url, username=user, password_file=out / "credentials" / f"{user}.password")
    return MqttLink(config, service=f"t-{user}", topics=Topics("layerwatch", printer), ephemeral=True)


def test_the_generated_broker_lets_each_service_do_its_part_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        require("mosquitto", "apt-get install mosquitto (make test does it)")
    out, port = tmp_path / "broker", free_port()
    args = ["security", "broker-config", "--printers", "p1,p2", "--out", str(out), "--port", str(port)]
    assert main([*args, "--run-as", getpass.getuser()]) == 0
    assert (out / "passwd").stat().st_mode & 0o777 == 0o600
    assert (out / "credentials" / "camera-p1.password").stat().st_mode & 0o777 == 0o600
    assert main([*args]) == 2  # never over a set-up in use
    proc = subprocess.Popen(
        [exe, "-c", str(out / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    url = f"mqtt://127.0.0.1:{port}"
    try:
        wait_port(port, 10, proc, out / "mosquitto.log")
        assert anonymous_allowed(MqttConfig(url=url)) is False
        with pytest.raises(MqttAuthError):
            bad = MqttConfig(url=url, username="camera-p1", connect_timeout_s=5)
            MqttLink(bad, service="t", topics=Topics("layerwatch", "p1"), ephemeral=True).start()
        got: list[str] = []
        seen = threading.Event()

        def note(topic: str, payload: bytes) -> None:
            got.append(topic)
            seen.set()

        monitor = _as(url, out, "monitor", "p1")
        for topic in ("layerwatch/+/image", "layerwatch/+/layer", "layerwatch/+/action"):
            monitor.subscribe(topic, note)
        with monitor.start(), _as(url, out, "camera-p1", "p1") as camera, _as(url, out, "bridge-p2", "p2") as bridge:
            for link, topic in [
                (camera, "layerwatch/p2/image"),  # another printer's frames
                (camera, "layerwatch/p1/action"),  # control
                (camera, "layerwatch/p1/layer"),  # layer events are the bridge's
                (bridge, "layerwatch/p1/layer"),  # another printer's
                (bridge, "layerwatch/p2/action"),
            ]:
                link.publish(topic, b"x")
            camera.publish("layerwatch/p1/image", b"frame", wait_s=5)
            bridge.publish("layerwatch/p2/layer", b"event")
            # a refusal is an error with the broker's reason, never a silent success
            with pytest.raises(
                PublishRefused, match=r"refused the publish of camera-p1 on layerwatch/p2/image: Not auth"
            ):
                camera.publish("layerwatch/p2/image", b"x", wait_s=5)
            assert camera.refused["layerwatch/p2/image"] == 2 and camera.refused["layerwatch/p1/action"] == 1
            assert "layerwatch/p1/image" not in camera.refused
            assert "Not authorized" in camera.problem
            deadline = time.monotonic() + 5
            while len(got) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
        assert sorted(got) == ["layerwatch/p1/image", "layerwatch/p2/layer"]
        # the G-code hook as a user the ACL forbids: the broker's "Not authorized" is the command's error, exit 2
        wrong = tmp_path / "wrong.toml"
        creds = out / "credentials" / "camera-p1.password"
        wrong.write_text(f'[mqtt]\nurl = "{url}"\nusername = "camera-p1"\npassword_file = "{creds}"\n')
        event = ["layer-event", "--printer", "p2", "--job", "j", "--layer", "0", "--z", "0.2", "--config", str(wrong)]
        assert main(event) == 2
        err = capsys.readouterr().err
        assert "refused the publish of camera-p1 on layerwatch/p2/layer: Not authorized" in err, err
        # and as the site's own bridge user of p2 ([site] credentials_dir): published
        site = out / "layerwatch.toml"
        assert main([*event[:-1], str(site)]) == 0 and "published layer 0" in capsys.readouterr().out
    finally:
        stop(proc)


def test_the_check_reports_an_open_broker_and_a_missing_operators_file(
    broker: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    acl = tmp_path / "acl"
    acl.write_text("user lw-camera\ntopic write layerwatch/+/image\n")
    config.write_text(f'[mqtt]\nurl = "{broker.url}"\n[printers.p1]\nbackend = "none"\n')
    assert main(["security", "check", "--config", str(config), "--acl", str(acl)]) == 1
    out = capsys.readouterr().out
    assert f"OPEN    broker {broker.url} lets in clients without a user name" in out
    assert "OPEN    no operators file" in out
    assert "lw-camera may write 'layerwatch/+/image': every printer's image" in out
    ops = tmp_path / "operators"
    ops.write_text("ana:" + "s" * 32 + "\n")
    ops.chmod(0o600)
    (tmp_path / "c2.toml").write_text(
        f'[mqtt]\nurl = "{broker.auth_url}"\nusername = "{Mosquitto.USER}"\n'
        f'[security]\noperators_file = "{ops}"\n[printers.p1]\nbackend = "none"\n'
    )
    monkeypatch.setenv("LAYERWATCH_MQTT_PASSWORD", Mosquitto.PASSWORD)
    assert main(["security", "check", "--config", str(tmp_path / "c2.toml")]) == 0
    out = capsys.readouterr().out
    assert "refuses clients without a user name" in out and "readable by its owner only" in out
