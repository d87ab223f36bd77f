"""Operator credentials: signing, the monitor's verification, the files, and ``layerwatch operator add``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from monitor.cli import main
from printer_io.credentials import (
    DUPLICATE,
    Credential,
    CredentialError,
    Verifier,
    client_credential,
    load_operators,
    new_secret,
    sign,
)
from printer_io.messages import ActionMessage, ActionState
from printer_io.vocabulary import ActionKind

ANA = Credential("ana", new_secret())


def _pause(rid: str = "r1") -> ActionMessage:
    return ActionMessage(printer="p1", action="pause", state=ActionState.REQUESTED, request_id=rid, reason="smoke")


def test_a_signed_request_verifies_once_and_survives_the_wire() -> None:
    verifier = Verifier({"ana": ANA.secret})
    msg = ActionMessage.from_json(sign(_pause(), ANA).to_json(), "t")  # as the monitor receives it
    assert msg.operator == "ana" and len(msg.signature) == 64
    assert verifier.refusal(msg) is None
    assert verifier.refusal(msg) == DUPLICATE  # redelivered: already carried out


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"action": ActionKind.RESUME}, "bad signature"),
        ({"printer": "p2"}, "bad signature"),
        ({"reason": "other"}, "bad signature"),
        ({"operator": "bob"}, "'bob' is not in the monitor's operators file"),
        ({"signature": ""}, "is not signed"),
        ({"signature": "0" * 64}, "bad signature"),
    ],
)
def test_any_change_to_a_signed_request_is_refused(change: dict[str, str], why: str) -> None:
    verifier = Verifier({"ana": ANA.secret})
    refusal = verifier.refusal(sign(_pause(), ANA).model_copy(update=change))
    assert refusal is not None and why in refusal


def test_requests_outside_the_window_are_refused_and_no_operators_means_no_requests() -> None:
    verifier = Verifier({"ana": ANA.secret}, window_s=60)
    old = sign(_pause(), ANA, at=time.time() - 61)
    assert "outside +-60 s" in (verifier.refusal(old) or "")
    future = sign(_pause("r2"), ANA, at=time.time() + 120)
    assert "outside +-60 s" in (verifier.refusal(future) or "")
    assert "no operator credentials are configured" in (Verifier({}).refusal(sign(_pause(), ANA)) or "")
    assert "wrong secret" in (Verifier({"ana": new_secret()}).refusal(sign(_pause(), ANA)) or "")


def test_the_operators_file_names_the_bad_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "operators"
    path.write_text(f"# who may pause\nana:{ANA.secret}\n\nbob:{new_secret()}\n")
    path.chmod(0o600)
    assert set(load_operators(path)) == {"ana", "bob"}
    for text, why in [
        ("ana\n", f"{path}:1: expected NAME:SECRET"),
        ("ana:short\n", f"{path}:1: the secret of 'ana' has 5 characters; at least 24"),
        (f"a b:{ANA.secret}\n", f"{path}:1: operator name 'a b'"),
        (f"ana:{ANA.secret}\nana:{ANA.secret}\n", f"{path}:2: operator 'ana' appears twice"),
    ]:
        path.write_text(text)
        with pytest.raises(CredentialError) as err:
            load_operators(path)
        assert str(err.value).startswith(why), err.value
    with pytest.raises(CredentialError, match=r"operators file .*/missing: No such file"):
        load_operators(tmp_path / "missing")
    path.write_text(f"ana:{ANA.secret}\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_operators(path)
    assert "can be read by other users: chmod 600" in caplog.text


def test_a_client_takes_its_credential_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAYERWATCH_OPERATOR_CREDENTIAL", raising=False)
    monkeypatch.delenv("LAYERWATCH_OPERATOR_CREDENTIAL_FILE", raising=False)
    with pytest.raises(CredentialError, match="no operator credential: set LAYERWATCH_OPERATOR_CREDENTIAL"):
        client_credential()
    monkeypatch.setenv("LAYERWATCH_OPERATOR_CREDENTIAL", f"ana:{ANA.secret}")
    assert client_credential() == ANA
    file = tmp_path / "ana.credential"
    file.write_text(f"bob:{ANA.secret}\n")
    assert client_credential(file).name == "bob"  # an explicit file wins
    assert "secret" not in repr(client_credential(file)) and ANA.secret not in repr(ANA)


def test_operator_add_writes_both_files_private_and_the_credential_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    operators, mine = tmp_path / "etc" / "operators", tmp_path / "ana.credential"
    assert main(["operator", "add", "ana", "--operators-file", str(operators), "--credential-out", str(mine)]) == 0
    assert main(["operator", "add", "bob", "--operators-file", str(operators)]) == 0
    out = capsys.readouterr().out
    assert operators.stat().st_mode & 0o777 == 0o600 and mine.stat().st_mode & 0o777 == 0o600
    bob = Credential.parse(out.strip().splitlines()[-1], "stdout")  # shown once
    known = load_operators(operators)
    assert set(known) == {"ana", "bob"}
    verifier = Verifier(known)
    assert verifier.refusal(sign(_pause("a"), client_credential(mine))) is None
    assert verifier.refusal(sign(_pause("b"), bob)) is None
    assert main(["operator", "add", "ana", "--operators-file", str(operators)]) == 2
    assert "'ana' is there already" in capsys.readouterr().err
