"""A site's parts each as their own broker user: the generated site config, the credentials each part takes, and
the ACL check ``layerwatch up`` runs before starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import load_config, part_user
from monitor.security import acl_allows, acl_findings, broker_config, parse_acl, part_needs
from monitor.supervise import parts_for, preflight


def test_the_generated_site_config_gives_every_part_its_own_user(tmp_path: Path) -> None:
    site = tmp_path / "site"
    broker_config(["p1"], site, port=1)
    config_file = site / "layerwatch.toml"
    config_file.write_text(config_file.read_text() + '[printers.p1]\nbackend = "virtual"\n[printers.p1.camera]\n')
    config = load_config(config_file)
    assert config.mqtt.username == "monitor" and config.mqtt.password_file == site / "credentials/monitor.password"
    for part, printer, user in (
        ("dashboard", None, "dashboard"),
        ("bridge", "p1", "bridge-p1"),
        ("camera", "p1", "camera-p1"),
        ("recoat-camera", "p1", "camera-p1"),
    ):
        mqtt = config.mqtt_for(part, printer)
        assert (mqtt.username, mqtt.password_file) == (user, site / "credentials" / f"{user}.password")
        assert mqtt.password_file.is_file() and mqtt.url == config.mqtt.url
    assert config.operators_file() == site / "operators" and config.monitor.out_dir == site.resolve() / "records"
    parts = parts_for(config, config_file, ["--port", "8050"])
    assert [p.name for p in parts] == ["monitor", "bridge:p1", "camera:p1", "dashboard"]
    assert all(p.own_user for p in parts if p.kind != "monitor")
    # the ACL the broker set-up wrote lets each part do its job: nothing to say (no broker answers on port 1)
    assert preflight(config, parts) == []


def test_a_printer_fed_by_the_octoprint_plugin_gets_no_bridge_and_its_plugin_user_only_its_own_topics(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    broker_config(["p1", "p2"], site, port=1)
    config_file = site / "layerwatch.toml"
    config_file.write_text(config_file.read_text() + '[printers.p1]\nbackend = "virtual"\nbridge = false\n')
    config = load_config(config_file)
    assert [p.name for p in parts_for(config, config_file, None)] == ["monitor"]
    assert (site / "credentials" / "octoprint-p1.password").is_file()
    rules = parse_acl(site / "acl")
    for access, topic in (
        ("write", "layerwatch/p1/layer"), ("write", "layerwatch/p1/image"), ("write", "layerwatch/p1/event"),
        ("write", "layerwatch/p1/status/octoprint"), ("read", "layerwatch/p1/result"),
        ("read", "layerwatch/p1/action"), ("read", "layerwatch/p1/image"),
    ):  # fmt: skip
        assert acl_allows(rules, "octoprint-p1", access, topic), (access, topic)
    for access, topic in (
        ("write", "layerwatch/p1/action"), ("write", "layerwatch/p1/result"), ("write", "layerwatch/p2/layer"),
        ("read", "layerwatch/p2/result"), ("write", "layerwatch/p1/status/monitor"),
    ):  # fmt: skip
        assert not acl_allows(rules, "octoprint-p1", access, topic), (access, topic)
    assert [f.level for f in acl_findings(site / "acl")] == ["ok"]


def test_a_part_s_own_keys_win_and_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(
        '[site]\ncredentials_dir = "creds"\n[dashboard]\nmqtt_username = "dash"\nmqtt_password_file = "d.pw"\n'
        '[printers.p1]\nbackend = "virtual"\nmqtt_username = "b1"\n'
    )
    config = load_config(config_file)
    assert config.part_credentials("dashboard") == ("dash", tmp_path / "d.pw")
    assert config.part_credentials("bridge", "p1") == ("b1", None)  # its password from the environment
    assert config.part_credentials("camera", "p1") == ("camera-p1", tmp_path / "creds" / "camera-p1.password")
    assert config.part_credentials("monitor") == (None, None)  # [mqtt]'s own
    with pytest.raises(ValueError, match="belongs to a printer"):
        part_user("camera")


def test_the_acl_is_read_as_mosquitto_reads_it(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(
        "# comment\ntopic read public/#\nuser cam\ntopic write lw/p1/image\ntopic read lw/p1/layer\n"
        "user mon\ntopic read lw/+/image\ntopic deny lw/secret/image\npattern write lw/%u/status/#\n"
    )
    rules = parse_acl(acl)
    assert acl_allows(rules, "cam", "write", "lw/p1/image") and not acl_allows(rules, "cam", "write", "lw/p2/image")
    assert not acl_allows(rules, "cam", "read", "lw/p1/image")  # write only
    assert acl_allows(rules, "mon", "read", "lw/p7/image") and not acl_allows(rules, "mon", "read", "lw/secret/image")
    assert acl_allows(rules, "cam", "write", "lw/cam/status/x")  # the pattern, with its user's name
    assert not acl_allows(rules, "mon", "read", "public/x")  # lines before any user are anonymous clients'
    assert ("write", "lw/p1/image") in part_needs("camera", "p1", "lw", ["p1"])


def test_the_check_finds_a_monitor_that_may_write_every_printer_s_frames(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user monitor\ntopic read layerwatch/+/image\ntopic write layerwatch/+/image\n")
    found = acl_findings(acl)
    assert [f.level for f in found] == ["open"] and "monitor may write 'layerwatch/+/image'" in found[0].what
