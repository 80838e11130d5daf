"""`fedtune-server admin ...`: the admin's REST operations from a shell, over HTTP(S).

It talks to a running server with the admin token, like any integrator would (the offline
`create-federation` and `enroll` open the database instead). Output is a readable table (any
control character in stored text printed as its escape), or the API's JSON with `--json`
(escaped by JSON). Every failure is one line on stderr and exit status 2: the
server's `detail` for a refusal, the reason for an unreachable server.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from shared.api import (
    API_PREFIX,
    CONTROL_CHARACTER,
    ClientInfo,
    EnrollmentToken,
    EnrollmentTokenRequest,
    ErrorBody,
    FederationInfo,
    FederationSummary,
    RoundStatus,
    SecaggState,
)
from shared.spec import SpecError, load_spec
from shared.validation import format_validation_error

__all__ = ["AdminError", "add_admin_parser"]

ENV_SERVER = "FEDTUNE_SERVER"
ENV_ADMIN_TOKEN = "FEDTUNE_ADMIN_TOKEN"
_TIMEOUT_S = 30.0
_CREATE_TIMEOUT_S = 600.0  # the server builds the model before it answers


class AdminError(Exception):
    """A one-line message for stderr; exit status 2."""


class _Admin:
    """The admin token's HTTP session with one server."""

    def __init__(self, args: argparse.Namespace) -> None:
        server = args.server or os.environ.get(ENV_SERVER)
        if not server:
            raise AdminError(f"no server: give --server URL (or set {ENV_SERVER})")
        url = httpx.URL(server)
        if url.scheme not in ("http", "https") or not url.host:
            raise AdminError(f"--server {server}: expected an http(s):// URL")
        if url.scheme == "http" and not args.insecure_http:
            raise AdminError(
                f"--server {server} is plain http: the admin token would cross the network "
                "unencrypted; use https (with --ca-cert for a private CA), or --insecure-http"
            )
        self.http = httpx.Client(
            base_url=server,
            headers={"Authorization": f"Bearer {_admin_token(args.admin_token_file)}"},
            verify=_verify(args.ca_cert),
            timeout=_TIMEOUT_S,
        )

    def call(
        self,
        method: str,
        path: str,
        model: Any,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float = _TIMEOUT_S,
    ) -> Any:
        """One request; the 2xx body parsed as `model` (a pydantic model or `list[...]`)."""
        headers = {"Idempotency-Key": uuid.uuid4().hex} if method == "POST" else None
        try:
            r = self.http.request(
                method, path, json=body, params=params, headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach {self.http.base_url}: {_reason(exc)}") from None
        if r.status_code >= 400:
            raise AdminError(_refusal(r))
        try:
            return TypeAdapter(model).validate_json(r.content)
        except ValidationError as exc:
            raise AdminError(
                f"{method} {path}: unexpected answer from the server: "
                f"{format_validation_error(exc)}"
            ) from None


def _admin_token(path: Path | None) -> str:
    if path is not None:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminError(f"--admin-token-file {path}: {_reason(exc)}") from None
        if not token:
            raise AdminError(f"--admin-token-file {path} is empty")
        return token
    token = os.environ.get(ENV_ADMIN_TOKEN, "").strip()
    if not token:
        raise AdminError(f"no admin token: give --admin-token-file FILE (or set {ENV_ADMIN_TOKEN})")
    return token


def _verify(ca_cert: Path | None) -> ssl.SSLContext | bool:
    if ca_cert is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_cert))
    except (OSError, ssl.SSLError) as exc:
        raise AdminError(f"--ca-cert {ca_cert}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _refusal(r: httpx.Response) -> str:
    try:
        body = ErrorBody.model_validate_json(r.content)
    except ValidationError:
        text = " ".join(r.text.split())[:200] or r.reason_phrase
        return f"server answered {r.status_code}: {_shown(text)}"
    return f"server answered {r.status_code} {_shown(body.error)}: {_shown(body.detail)}"


# -- output --------------------------------------------------------------------------------


def _shown(value: object) -> str:
    """`value` as text safe to print: each control character as its escape (`\\x1b`, `\\r`,
    `\\u202e`), so stored text (a name from before they were refused) cannot move the cursor,
    rewrite a row or reorder a line."""
    return CONTROL_CHARACTER.sub(
        lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value)
    )


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header), *([_shown(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _emit(args: argparse.Namespace, result: Any, text: Callable[[], str]) -> None:
    if args.json:
        items = result if isinstance(result, list) else [result]
        data = [m.model_dump(mode="json") for m in items]
        print(json.dumps(data if isinstance(result, list) else data[0], indent=2))
    else:
        print(text())


def _federation_text(
    info: FederationInfo, current: RoundStatus | None = None, secure: SecaggState | None = None
) -> str:
    spec = info.spec
    lines = [
        f"federation {info.id} ({_shown(info.name)}): {info.status}",
        f"  round:     {info.current_round}/{spec.rounds.total}"
        + (f" {current.status}, {current.received}/{current.quorum} updates" if current else ""),
        f"  model:     {spec.model.family} {spec.model.arch}, method {spec.method.name}, "
        f"{info.trainable_params} of {info.total_params} parameters train",
        f"  version:   {info.global_version}",
        f"  base:      {info.base_fingerprint} (served: {'yes' if info.base_available else 'no'})",
        f"  created:   {_when(info.created_at)}",
    ]
    if secure is not None:  # the open round's protocol, after the round line
        last = f"; last event: {_shown(secure.events[-1])}" if secure.events else ""
        lines.insert(
            2,
            f"  secure:    phase {secure.phase}, attempt {secure.attempt} (phase ends "
            f"{_when(secure.deadline_at)}); cohort {len(secure.cohort)}, shared keys "
            f"{len(secure.shared)}, inputs counted {len(secure.survivors)}{last}",
        )
    return "\n".join(lines)


# -- commands ------------------------------------------------------------------------------


def _federations_list(admin: _Admin, args: argparse.Namespace) -> None:
    feds = admin.call("GET", f"{API_PREFIX}/federations", list[FederationSummary])
    rows = [
        (f.id, f.name, f.status, f"{f.current_round}/{f.total_rounds}", _when(f.created_at))
        for f in feds
    ]
    _emit(args, feds, lambda: _table(("ID", "NAME", "STATUS", "ROUND", "CREATED"), rows))


def _federations_show(admin: _Admin, args: argparse.Namespace) -> None:
    info = admin.call("GET", f"{API_PREFIX}/federations/{args.federation}", FederationInfo)
    current = admin.call(
        "GET", f"{API_PREFIX}/federations/{args.federation}/rounds/current", RoundStatus
    )
    secure = None
    if info.spec.secure_aggregation is not None and current.status == "open":
        path = f"{API_PREFIX}/federations/{info.id}/rounds/{current.round}/secure-aggregation"
        secure = admin.call("GET", path, SecaggState)
    _emit(args, info, lambda: _federation_text(info, current, secure))


def _federations_create(admin: _Admin, args: argparse.Namespace) -> None:
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        where = "" if str(args.spec) in str(exc) else f"{args.spec}: "
        raise AdminError(f"--spec {where}{exc}") from None
    body = spec.model_dump(mode="json")
    path = f"{API_PREFIX}/federations"
    info = admin.call("POST", path, FederationInfo, body=body, timeout=_CREATE_TIMEOUT_S)
    _emit(args, info, lambda: _federation_text(info))


def _lifecycle(action: str) -> Callable[[_Admin, argparse.Namespace], None]:
    def run(admin: _Admin, args: argparse.Namespace) -> None:
        path = f"{API_PREFIX}/federations/{args.federation}/{action}"
        info = admin.call("POST", path, FederationInfo)
        _emit(args, info, lambda: f"federation {info.id} ({_shown(info.name)}): {info.status}")

    return run


def _enroll(admin: _Admin, args: argparse.Namespace) -> None:
    try:
        req = EnrollmentTokenRequest(uses=args.uses, expires_in_s=args.expires_in)
    except ValidationError as exc:
        raise AdminError(format_validation_error(exc)) from None
    path = f"{API_PREFIX}/federations/{args.federation}/enrollment-tokens"
    token = admin.call("POST", path, EnrollmentToken, body=req.model_dump(mode="json"))
    _emit(args, token, lambda: token.token)


def _clients_list(admin: _Admin, args: argparse.Namespace) -> None:
    params = {"federation_id": args.federation} if args.federation else None
    found = admin.call("GET", f"{API_PREFIX}/clients", list[ClientInfo], params=params)
    rows = [
        (c.client_id, c.name, c.federation_id, _when(c.created_at), c.updates,
         "revoked" if c.revoked else "active")
        for c in found
    ]  # fmt: skip
    header = ("CLIENT", "NAME", "FEDERATION", "CREATED", "UPDATES", "STATUS")
    _emit(args, found, lambda: _table(header, rows))


def _clients_revoke(admin: _Admin, args: argparse.Namespace) -> None:
    client = admin.call("DELETE", f"{API_PREFIX}/clients/{args.client}", ClientInfo)
    _emit(args, client, lambda: f"revoked client {client.client_id} ({_shown(client.name)})")


# -- parser --------------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--server", help=f"the server's URL (default: ${ENV_SERVER})")
    p.add_argument(
        "--admin-token-file",
        type=Path,
        help=f"file holding the admin token (or ${ENV_ADMIN_TOKEN})",
    )
    p.add_argument("--ca-cert", type=Path, help="PEM of a private CA to trust")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow a plain http:// server (the token crosses the network unencrypted)",
    )
    p.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    return p


def add_admin_parser(sub: Any) -> None:
    """Add `admin` and its commands to the `fedtune-server` subparsers `sub`."""
    common = _connection_options()
    admin = sub.add_parser("admin", help="admin operations on a running server, over HTTP(S)")
    groups = admin.add_subparsers(dest="admin_group", required=True)

    def leaf(parent: Any, name: str, run: Callable[[_Admin, argparse.Namespace], None], h: str):
        p = parent.add_parser(name, parents=[common], help=h)
        p.set_defaults(run=_runner(run))
        return p

    feds = groups.add_parser("federations", help="list, show, create, pause, resume, cancel")
    fsub = feds.add_subparsers(dest="admin_command", required=True)
    leaf(fsub, "list", _federations_list, "every federation")
    leaf(fsub, "show", _federations_show, "one federation").add_argument("federation")
    leaf(fsub, "create", _federations_create, "create from a spec").add_argument(
        "--spec", type=Path, required=True, help="YAML or JSON federation spec"
    )
    for action, h in (
        ("pause", "refuse updates and stop deadlines until resumed"),
        ("resume", "resume a paused federation (the open round's deadline restarts)"),
        ("cancel", "end the federation for good; clients stop"),
    ):
        leaf(fsub, action, _lifecycle(action), h).add_argument("federation")

    e = leaf(groups, "enroll", _enroll, "issue an enrollment token (prints it)")
    e.add_argument("federation")
    e.add_argument("--uses", type=int, default=1, help="registrations it allows (default 1)")
    e.add_argument(
        "--expires-in", type=int, default=7 * 24 * 3600, help="lifetime in seconds (7 days)"
    )

    clients = groups.add_parser("clients", help="list or revoke clients")
    csub = clients.add_subparsers(dest="admin_command", required=True)
    leaf(csub, "list", _clients_list, "every client").add_argument(
        "--federation", help="only this federation's"
    )
    leaf(csub, "revoke", _clients_revoke, "revoke a client's API key").add_argument("client")


def _runner(
    run: Callable[[_Admin, argparse.Namespace], None],
) -> Callable[[argparse.Namespace], None]:
    def call(args: argparse.Namespace) -> None:
        admin = _Admin(args)
        try:
            run(admin, args)
        finally:
            admin.http.close()

    return call
