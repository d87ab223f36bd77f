"""Operators: pause and resume requests, verdicts, credentials and the security set-up."""

from __future__ import annotations

import argparse
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from monitor.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    CommandError,
    RefusedError,
    connect,
    mqtt_args,
    port,
)
from printer_io.vocabulary import Verdict


def cmd_control(args: argparse.Namespace) -> int:
    from printer_io.messages import ActionMessage, ActionState

    msg = ActionMessage(
        printer=args.printer,
        action=args.action,
        state=ActionState.REQUESTED,
        request_id=f"operator:{uuid.uuid4().hex[:12]}",
        reason=args.reason,
    )
    answer = _ask_monitor(args, msg)
    if answer.state != ActionState.CONFIRMED:
        raise RefusedError(f"{args.action} {args.printer}: {answer.state.value}: {answer.detail or answer.reason}")
    who = answer.operator
    print(
        f"{args.action} {args.printer}: confirmed by the monitor ({answer.detail}); recorded as asked by operator "
        f"{who} (request {msg.request_id})"
    )
    return EXIT_OK


def _ask_monitor(args: argparse.Namespace, msg: Any) -> Any:
    """Publish an operator's request and wait for the monitor's outcome of it (same request id)."""

    from printer_io.credentials import client_credential, sign
    from printer_io.messages import ActionMessage, ActionState

    msg = sign(msg, client_credential(args.credential_file))  # the monitor carries out signed requests only
    answers: list[ActionMessage] = []
    got = threading.Event()

    def on_action(topic: str, payload: bytes) -> None:
        reply = ActionMessage.from_json(payload, topic)
        if reply.request_id == msg.request_id and reply.state != ActionState.REQUESTED:
            answers.append(reply)
            got.set()

    link = connect(args, "operator", ephemeral=True)
    link.subscribe(link.topics.action, on_action)
    link.start()
    try:
        link.publish(link.topics.action, msg.to_json(), wait_s=10)
        if not got.wait(args.wait):
            raise RefusedError(
                f"no answer from a monitor of printer {args.printer!r} within {args.wait:g} s: is `layerwatch monitor` "
                "running for it, on this broker? Nothing was done"
            )
    finally:
        link.close()
    answer = answers[0]  # the operator it was carried out for: the one whose credential signed it
    return answer if answer.operator else answer.model_copy(update={"operator": msg.operator})


def cmd_operator(args: argparse.Namespace) -> int:
    """``operator add NAME``: a new secret in the monitor's operators file, and the operator's own copy."""

    from printer_io.credentials import Credential, load_operators, new_secret

    cred = Credential.parse(f"{args.name}:{new_secret()}", "operator add")
    path: Path = args.operators_file
    known = load_operators(path) if path.exists() else {}
    if cred.name in known:
        raise CommandError(f"operators file {path}: {cred.name!r} is there already; remove its line to renew it")
    for target in [path] + ([args.credential_out] if args.credential_out else []):
        if target == args.credential_out and target.exists():
            raise CommandError(f"credential file {target} exists already: choose a new path")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(f"{cred.name}:{cred.secret}\n")
        except OSError as err:
            raise CommandError(f"{target}: {err.strerror}") from err
    print(f"operator {cred.name} added to {path} (the monitor reads it at start)")
    if args.credential_out:
        print(f"their credential is in {args.credential_out}: give it to them, readable by them only")
    else:
        print(f"their credential, shown once (set LAYERWATCH_OPERATOR_CREDENTIAL to it):\n{cred.name}:{cred.secret}")
    return EXIT_OK


def cmd_security_broker(args: argparse.Namespace) -> int:
    from monitor.security import broker_config

    printers = [p.strip() for p in args.printers.split(",") if p.strip()]
    if not printers:
        raise CommandError("--printers: give the printer ids, comma-separated")
    try:
        users = broker_config(
            printers, args.out, prefix=args.prefix, host=args.host, port=args.port, tls=args.tls, run_as=args.run_as
        )
    except FileExistsError as err:
        raise CommandError(str(err)) from None
    except OSError as err:
        raise CommandError(f"{args.out}: {err.strerror}") from err
    print(f"wrote {args.out}/mosquitto.conf, passwd, acl and credentials/ for {len(users)} users: {', '.join(users)}")
    print(f"start the broker: mosquitto -c {args.out / 'mosquitto.conf'}")
    if not args.run_as:
        print(f"mosquitto started as root runs as user mosquitto: chown mosquitto {args.out}/passwd {args.out}/acl")
    print(
        f"the site's config: {args.out / 'layerwatch.toml'}: every part `layerwatch up` starts connects as its own "
        "user; append a [printers.<id>] table per printer, add operators (layerwatch operator add NAME "
        f"--operators-file {args.out / 'operators'}), then: layerwatch up --config {args.out / 'layerwatch.toml'}"
    )
    print(
        "a service on another machine: copy its credentials/<user>.password there (readable by it only) and set "
        '[mqtt] username = "<user>", password_file = "<that file>"'
    )
    if args.tls:
        print(f"put ca.crt, broker.crt and broker.key in {args.out / 'tls'}; services use mqtts:// with ca_file")
    return EXIT_OK


def cmd_security_check(args: argparse.Namespace) -> int:
    from monitor.config import load_config
    from monitor.security import check

    findings = check(load_config(args.config), acl=args.acl, dashboards=tuple(args.dashboard or ()))
    for f in findings:
        print(f)
    open_ = sum(f.level == "open" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    print(f"{open_} open, {warnings} warnings, {len(findings) - open_ - warnings} ok")
    return EXIT_PARTIAL if open_ else EXIT_OK


def cmd_feedback(args: argparse.Namespace) -> int:
    from printer_io.messages import ActionMessage
    from printer_io.vocabulary import ActionKind, ActionState

    msg = ActionMessage(
        printer=args.printer,
        action=ActionKind.FEEDBACK,
        state=ActionState.REQUESTED,
        request_id=f"feedback:{uuid.uuid4().hex[:12]}",
        incident=args.incident,
        verdict=args.verdict,
        reason=args.note,
    )
    answer = _ask_monitor(args, msg)
    if answer.state != ActionState.CONFIRMED:
        raise RefusedError(f"feedback on {args.incident}: refused: {answer.detail}")
    print(
        f"incident {args.incident} is {args.verdict}: stored as operator {answer.operator}'s verdict ({answer.detail})"
    )
    return EXIT_OK


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``layerwatch`` parser."""
    p = sub.add_parser("control", help="ask the monitor to pause or resume a printer (recorded like its own actions)")
    p.add_argument("action", choices=("pause", "resume"))
    mqtt_args(p)
    p.add_argument(
        "--credential-file", type=Path, default=None,
        help="file with this operator's NAME:SECRET (else LAYERWATCH_OPERATOR_CREDENTIAL or "
        "LAYERWATCH_OPERATOR_CREDENTIAL_FILE); the record names the operator from it",
    )  # fmt: skip
    p.add_argument("--reason", default="", help="why (recorded)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the monitor's answer (default 60)")
    p.set_defaults(func=cmd_control)

    p = sub.add_parser("operator", help="manage who may pause, resume and judge (operator credentials)")
    osub = p.add_subparsers(dest="operator_command", required=True)
    q = osub.add_parser("add", help="make an operator's secret: into the operators file, and their copy")
    q.add_argument("name", help="the operator's name, as records will show it: letters, digits, _ . @ -")
    q.add_argument(
        "--operators-file", type=Path, required=True,
        help="the monitor's operators file ([security] operators_file); created readable by its owner only",
    )  # fmt: skip
    q.add_argument("--credential-out", type=Path, default=None, help="write the operator's NAME:SECRET here")
    q.set_defaults(func=cmd_operator)

    p = sub.add_parser("security", help="a broker set-up that trusts nobody by default; a check of what stands open")
    ssub = p.add_subparsers(dest="security_command", required=True)
    q = ssub.add_parser("broker-config", help="Mosquitto config, passwords and ACL: no anonymous access, least rights")
    q.add_argument("--printers", required=True, help="printer ids, comma-separated")
    q.add_argument("--out", type=Path, required=True, help="a new folder for mosquitto.conf, passwd, acl, credentials/")
    q.add_argument("--prefix", default="layerwatch", help="topic prefix (default layerwatch)")
    q.add_argument("--host", default="127.0.0.1", help="address the broker listens on (default 127.0.0.1)")
    q.add_argument("--port", type=port, default=1883, help="its port (default 1883; 8883 with --tls is usual)")
    q.add_argument("--tls", action="store_true", help="a TLS listener (the certificates go in OUT/tls)")
    q.add_argument("--run-as", default=None, help="the user Mosquitto runs as (its 'user' setting)")
    q.set_defaults(func=cmd_security_broker)
    q = ssub.add_parser("check", help="report anonymous brokers, wide ACLs, over-privileged printer keys, open pages")
    q.add_argument("--config", type=Path, required=True, help="the monitor's TOML config")
    q.add_argument("--acl", type=Path, default=None, help="the broker's ACL file, to look for writes to every printer")
    q.add_argument("--dashboard", action="append", help="a dashboard URL to try without a login (repeatable)")
    q.set_defaults(func=cmd_security_check)

    p = sub.add_parser("feedback", help="tell the monitor whether an incident was a false alarm or a real defect")
    mqtt_args(p)
    p.add_argument("--incident", required=True, help="incident id (from the action messages or the record)")
    p.add_argument("--verdict", choices=[str(v) for v in Verdict], required=True)
    p.add_argument(
        "--credential-file", type=Path, default=None,
        help="file with this operator's NAME:SECRET (else LAYERWATCH_OPERATOR_CREDENTIAL or "
        "LAYERWATCH_OPERATOR_CREDENTIAL_FILE); the record names the operator from it",
    )  # fmt: skip
    p.add_argument("--note", default="", help="free text")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the monitor's answer (default 30)")
    p.set_defaults(func=cmd_feedback)
