"""The one secret reader: environment first, then a bounded file; failures name where to put the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from printer_io.errors import ConfigError
from printer_io.secrets import MAX_SECRET_FILE_BYTES, optional_secret, read_secret


def test_the_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "key"
    f.write_text("from-file\nsecond line is ignored\n")
    monkeypatch.delenv("LW_TEST_KEY", raising=False)
    assert read_secret("LW_TEST_KEY", f, "test key") == "from-file"
    monkeypatch.setenv("LW_TEST_KEY", " from-env ")
    assert read_secret("LW_TEST_KEY", f, "test key") == "from-env"


def test_missing_empty_and_oversized_secrets_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LW_TEST_KEY", raising=False)
    assert optional_secret("LW_TEST_KEY", None, "test key") is None
    with pytest.raises(ConfigError, match=r"no test key: set \$LW_TEST_KEY"):
        read_secret("LW_TEST_KEY", None, "test key")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret("LW_TEST_KEY", empty, "test key")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="at most"):
        read_secret("LW_TEST_KEY", big, "test key")
    with pytest.raises(ConfigError, match="No such file"):
        read_secret("LW_TEST_KEY", tmp_path / "absent", "test key")
