"""The one way a service reads a secret: from the environment, else from a file it names.

Secrets never come from a config file's text, a command line or a log. A secret file is read bounded
(``MAX_SECRET_FILE_BYTES``), as UTF-8, with a warning where other users can read it; every failure is a
:class:`ConfigError` naming the variable or file and what to do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from printer_io.errors import ConfigError

__all__ = ["MAX_SECRET_FILE_BYTES", "optional_secret", "read_secret", "read_secret_file"]

log = logging.getLogger(__name__)

MAX_SECRET_FILE_BYTES = 1 << 20


def read_secret_file(path: Path, what: str, error: type[ConfigError] = ConfigError) -> str:
    """The whole text of a secret file (bounded, UTF-8); warns when group or others may read it."""
    try:
        st = path.stat()
        if st.st_size > MAX_SECRET_FILE_BYTES:
            raise error(f"{what} {path}: {st.st_size} bytes; at most {MAX_SECRET_FILE_BYTES}")
        if st.st_mode & 0o077:
            log.warning("%s %s can be read by other users: chmod 600 %s", what, path, path)
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise error(f"{what} {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise error(f"{what} {path}: not UTF-8 text") from err


def optional_secret(env: str, file: Path | None, what: str) -> str | None:
    """``$env`` if set, else the first line of ``file``; None when neither is given."""
    value = os.environ.get(env, "").strip()
    if value:
        return value
    if file is None:
        return None
    lines = read_secret_file(file, f"{what} file").strip().splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"{what} file {file} is empty: write the secret on its first line")
    return lines[0].strip()


def read_secret(env: str, file: Path | None, what: str) -> str:
    """As :func:`optional_secret`, but a missing secret is an error saying where to put it."""
    value = optional_secret(env, file, what)
    if value is None:
        raise ConfigError(f"no {what}: set ${env} or name a file that holds it")
    return value
