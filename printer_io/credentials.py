"""Operator credentials: who may move a printer or judge an incident, verified by the monitor itself.

An operator holds a name and a secret (``layerwatch operator add NAME`` makes one). A request that moves a
printer or writes into a record (pause, resume, a verdict, the plate outline) carries the operator's name, the
time it was made and an HMAC-SHA256 of its whole content under the operator's secret. The monitor, which holds
the operators file, carries a request out only when the signature verifies, the time is within its window and
the request id is new. So an open or misconfigured broker, or a camera's stolen broker password, cannot move a
printer, and the operator named in the record is the one whose secret signed. The broker's ACLs are the
second line, not the only one.

The operators file: one ``NAME:SECRET`` a line, ``#`` comments; readable by its owner only. A client (the
``control`` and ``feedback`` commands) reads its own ``NAME:SECRET`` from ``LAYERWATCH_OPERATOR_CREDENTIAL``
or from the file ``LAYERWATCH_OPERATOR_CREDENTIAL_FILE`` (or ``--credential-file``) names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from printer_io.errors import ConfigError
from printer_io.messages import ActionMessage
from printer_io.secrets import read_secret_file

__all__ = [
    "CREDENTIAL_ENV",
    "CREDENTIAL_FILE_ENV",
    "OPERATORS_FILE_ENV",
    "Credential",
    "CredentialError",
    "Verifier",
    "client_credential",
    "load_operators",
    "new_secret",
    "sign",
]

log = logging.getLogger(__name__)

CREDENTIAL_ENV = "LAYERWATCH_OPERATOR_CREDENTIAL"
CREDENTIAL_FILE_ENV = "LAYERWATCH_OPERATOR_CREDENTIAL_FILE"
OPERATORS_FILE_ENV = "LAYERWATCH_OPERATORS_FILE"
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_SECRET_CHARS = 24
MAX_FILE_BYTES = 1 << 20
DUPLICATE = "duplicate"  # a request id already carried out: QoS 1 redelivery, ignored without an answer


class CredentialError(ConfigError):
    """A credential or operators file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Credential:
    name: str
    secret: str = field(repr=False)

    @classmethod
    def parse(cls, text: str, source: str) -> Credential:
        name, sep, secret = text.strip().partition(":")
        if not sep:
            raise CredentialError(f"{source}: expected NAME:SECRET (make one with `layerwatch operator add NAME`)")
        if not NAME_RE.fullmatch(name):
            raise CredentialError(f"{source}: operator name {name[:70]!r}: use 1-64 letters, digits, _ . @ -")
        if len(secret) < MIN_SECRET_CHARS:
            raise CredentialError(
                f"{source}: the secret of {name!r} has {len(secret)} characters; at least {MIN_SECRET_CHARS} "
                "(make one with `layerwatch operator add NAME`)"
            )
        return cls(name, secret)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _read_small(path: Path, what: str) -> str:
    return read_secret_file(path, what, CredentialError)


def load_operators(path: Path) -> dict[str, str]:
    """The operators file: name -> secret. A bad line stops with its file and line number."""
    operators: dict[str, str] = {}
    for number, line in enumerate(_read_small(path, "operators file").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cred = Credential.parse(line, f"{path}:{number}")
        if cred.name in operators:
            raise CredentialError(f"{path}:{number}: operator {cred.name!r} appears twice")
        operators[cred.name] = cred.secret
    return operators


def client_credential(file: Path | None = None) -> Credential:
    """The credential a client signs with: ``file``, else the environment (see the module's text)."""
    if file is None and os.environ.get(CREDENTIAL_ENV):
        return Credential.parse(os.environ[CREDENTIAL_ENV], CREDENTIAL_ENV)
    path = file or (Path(os.environ[CREDENTIAL_FILE_ENV]) if os.environ.get(CREDENTIAL_FILE_ENV) else None)
    if path is None:
        raise CredentialError(
            f"no operator credential: set {CREDENTIAL_ENV}=NAME:SECRET or {CREDENTIAL_FILE_ENV}=FILE "
            "(`layerwatch operator add NAME` makes one); the monitor carries out signed requests only"
        )
    lines = [ln for ln in _read_small(path, "credential file").splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise CredentialError(f"credential file {path}: expected one NAME:SECRET line, found {len(lines)}")
    return Credential.parse(lines[0], str(path))


def _digest(msg: ActionMessage, secret: str) -> str:
    content = msg.model_dump(mode="json", exclude={"signature"})
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hmac.new(secret.encode(), blob, hashlib.sha256).hexdigest()


def sign(msg: ActionMessage, cred: Credential, at: float | None = None) -> ActionMessage:
    """``msg`` as ``cred``'s operator asks for it now (or ``at``): name, time and signature set."""
    when = time.time() if at is None else at
    named = msg.model_copy(update={"operator": cred.name, "time": when, "signature": ""})
    return named.model_copy(update={"signature": _digest(named, cred.secret)})


class Verifier:
    """The monitor's check of an operator's request: known operator, valid signature, fresh, not replayed."""

    def __init__(self, operators: dict[str, str], window_s: float = 120.0, remember: int = 10_000) -> None:
        self.operators = dict(operators)
        self.window_s = window_s
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._remember = remember

    def refusal(self, msg: ActionMessage, now: float | None = None) -> str | None:
        """Why ``msg`` must not be carried out, or None. :data:`DUPLICATE` for a request already accepted."""
        now = time.time() if now is None else now
        if not self.operators:
            return (
                "no operator credentials are configured on the monitor ([security] operators_file or "
                f"{OPERATORS_FILE_ENV}); it carries out no remote request"
            )
        secret = self.operators.get(msg.operator)
        if secret is None:
            return f"operator {msg.operator[:64]!r} is not in the monitor's operators file"
        if not msg.signature:
            return f"request of operator {msg.operator!r} is not signed"
        if not hmac.compare_digest(_digest(msg, secret), msg.signature):
            return f"bad signature for operator {msg.operator!r} (wrong secret, or the request was altered)"
        if abs(now - msg.time) > self.window_s:
            return (
                f"request signed {now - msg.time:+.0f} s from the monitor's clock, outside +-{self.window_s:g} s "
                "(replayed, or the clocks differ)"
            )
        key = f"{msg.operator}\n{msg.request_id}"
        if key in self._seen:
            return DUPLICATE
        self._seen[key] = now
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return None
