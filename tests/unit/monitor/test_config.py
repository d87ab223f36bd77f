"""The TOML config: unknown sections and keys stop start-up with a line naming them."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ConfigFileError, load_config
from printer_io.errors import ConfigError
from printer_io.mqtt import PASSWORD_ENV, USERNAME_ENV, MqttConfig


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "layerwatch.toml"
    path.write_text(text)
    return path


def test_a_valid_file_is_loaded(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[mqtt]\nurl = "mqtts://broker.local:8884"\nkeepalive_s = 20\n'))
    assert cfg.mqtt.endpoint() == ("broker.local", 8884, True)
    assert load_config(None).mqtt.endpoint() == ("127.0.0.1", 1883, False)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[mqt]\nurl = 'x'\n", "unknown section [mqt]; known sections: mqtt"),
        ("[mqtt]\nurl2 = 'x'\n", "[mqtt] has no key 'url2'; allowed keys:"),
        ("[mqtt]\nkeepalive_s = 1\n", "[mqtt] keepalive_s = 1: Input should be greater than or equal to 5"),
        ("[mqtt]\nprotocol = '4'\n", "[mqtt] protocol = '4'"),
        ("[mqtt\n", "is not valid TOML"),
        ("[printers.p1]\nroi = [[0, 0], [10, 0]]\n", "[printers.p1] roi: roi needs at least 3 [x, y] points"),
        ("[printers.p1]\nroi = [[0, 0], [10, -1], [5, 5]]\n", "[printers.p1] roi: roi points are camera pixels"),
        ("[monitor]\nreference_layers = -1\n", "[monitor] reference_layers = -1"),
    ],
)
def test_bad_files_name_section_key_and_value(tmp_path: Path, text: str, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("url", ["http://x:1883", "mqtt://", "mqtt://host:port"])
def test_bad_broker_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="mqtt url"):
        MqttConfig(url=url).endpoint()


def test_credentials_come_from_env_or_file_never_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "password" not in MqttConfig.model_fields
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    cfg = MqttConfig(username="cam", password_file=secret)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(USERNAME_ENV, raising=False)
    assert cfg.credentials() == ("cam", "from-file")
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    monkeypatch.setenv(USERNAME_ENV, "other")
    assert cfg.credentials() == ("other", "from-env")
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError, match=r"password_file .*missing"):
        MqttConfig(password_file=tmp_path / "missing").credentials()


def test_a_printer_table_takes_its_backends_settings(tmp_path: Path) -> None:
    text = '[printers.p1]\nbackend = "moonraker"\nurl = "http://10.0.0.7:7125"\ntimeout_s = 3\nmm_per_px = 0.1\n'
    section = load_config(_write(tmp_path, text)).printers["p1"]
    assert section.options == {"url": "http://10.0.0.7:7125", "timeout_s": 3.0}
    assert section.mm_per_px == 0.1


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '[printers.p1]\nbackend = "virtual"\nurl = "http://x"\n',
            "backend 'virtual' has no setting 'url'; its settings:",
        ),
        ('[printers.p1]\nbackend = "octoprint"\ntimeout_s = -1\n', "timeout_s = -1"),
        ('[printers.p1]\nurl = "http://x"\n', "backend 'none' takes no settings; remove url"),
    ],
)
def test_a_setting_the_backend_does_not_have_is_named(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigFileError) as err:
        load_config(_write(tmp_path, text))
    assert words in str(err.value) and "[printers.p1]" in str(err.value)
