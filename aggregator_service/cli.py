"""`fedtune-server`: run the aggregator, the few admin tasks that work offline, and the admin
operations on a running server (`admin ...`, over HTTP(S))."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aggregator_service.admin import AdminError, add_admin_parser
from aggregator_service.services.errors import DomainError
from aggregator_service.settings import Settings
from shared.spec import load_spec
from shared.validation import format_validation_error

__all__ = ["main", "openapi_document"]

log = logging.getLogger("fedtune.server")

_LOOPBACK_NAMES = ("localhost", "localhost.")


class CliError(Exception):
    """A one-line message for stderr; exit status 2."""


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    fields = (
        *("host", "port", "data_dir", "database_url", "database_url_file"),
        *("ssl_certfile", "ssl_keyfile"),
        *("admin_token_file", "max_upload_mb", "max_json_kb", "max_header_kb"),
        *("header_timeout_s", "keep_alive_s", "shutdown_timeout_s"),
        *("limit_concurrency", "max_connections"),
        *("max_polls_per_client", "max_uploads_per_client", "insecure_http", "docs"),
        *("lease_s", "upload_idle_s", "upload_min_kib_s"),
        *("metrics_token_file", "metrics_host", "metrics_port", "blob_url", "presign_downloads"),
    )
    given = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    try:
        return Settings(**given, **extra)
    except ValidationError as exc:
        raise CliError(f"bad setting: {format_validation_error(exc)}") from None


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any address


def _check_transport(settings: Settings) -> None:
    """Plain HTTP only on loopback, unless the operator says a TLS proxy is in front."""
    if settings.ssl_certfile is not None or _is_loopback(settings.host):
        return
    if not settings.insecure_http:
        raise CliError(
            f"refusing plain HTTP on {settings.host}: give --ssl-certfile and --ssl-keyfile, "
            "or --insecure-http when a TLS-terminating proxy is in front"
        )
    log.warning(
        "serving plain HTTP on %s (--insecure-http): tokens and model updates cross the "
        "network unencrypted, so a TLS-terminating proxy must be in front of this port",
        settings.host,
    )


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from aggregator_service.api.connections import DrainingServer, guarded_h11
    from aggregator_service.main import create_app
    from aggregator_service.metrics import MetricsListener

    settings = _settings(args)
    for name in ("ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise CliError(f"--{name.replace('_', '-')} {path}: no such file")
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        raise CliError("--ssl-certfile and --ssl-keyfile go together")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fedtune").setLevel(logging.INFO)
    _check_transport(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        http=guarded_h11(settings.header_timeout_s, settings.max_connections),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        limit_concurrency=settings.limit_concurrency,
    )
    listener = None
    if settings.metrics_port is not None:
        core = app.state.core
        listener = MetricsListener(core.metrics, settings.metrics_host, settings.metrics_port)
    try:
        DrainingServer(config, app.state.runner).run()
    finally:
        if listener is not None:
            listener.close()


def _create_federation(args: argparse.Namespace) -> None:
    from aggregator_service.main import build_core
    from aggregator_service.services.federations import create_federation

    spec = load_spec(args.spec)
    core = build_core(_settings(args))
    info = create_federation(core, spec)
    print(info.id)
    print(info.model_dump_json(indent=2))


def _enroll(args: argparse.Namespace) -> None:
    from aggregator_service.main import build_core
    from aggregator_service.services.access import create_enrollment_token
    from shared.api import EnrollmentTokenRequest

    try:
        req = EnrollmentTokenRequest(uses=args.uses, expires_in_s=args.expires_in)
    except ValidationError as exc:
        raise CliError(format_validation_error(exc)) from None
    core = build_core(_settings(args))
    print(create_enrollment_token(core, args.federation, req).token)


def openapi_document() -> str:
    """The service's OpenAPI document as stable JSON (sorted keys, trailing newline)."""
    from aggregator_service.main import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp), admin_token="openapi-export-" + "0" * 32))
        doc = app.openapi()
        app.state.core.db.dispose()
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _export_openapi(args: argparse.Namespace) -> None:
    text = openapi_document()
    if args.output == "-":
        sys.stdout.write(text)
        return
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")


def _methods(args: argparse.Namespace) -> None:
    from shared.tuning import format_method_table, method_reports

    reports = method_reports(load_spec(args.spec))
    if args.json:
        print(json.dumps([r.model_dump() for r in reports]))
    else:
        print(format_method_table(reports))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedtune-server", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(sp: argparse.ArgumentParser, required: bool) -> None:
        sp.add_argument("--data-dir", type=Path, required=required, help="database and blobs")
        sp.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in data dir)")
        sp.add_argument(
            "--database-url-file", type=Path, help="file holding the SQLAlchemy URL (first line)"
        )
        sp.add_argument("--blob-url", help="s3://bucket/prefix (default: blobs in the data dir)")

    s = sub.add_parser("serve", help="run the aggregator service")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    data_args(s, required=False)
    s.add_argument("--ssl-certfile", type=Path)
    s.add_argument("--ssl-keyfile", type=Path)
    s.add_argument("--admin-token-file", type=Path)
    s.add_argument("--max-upload-mb", type=float)
    s.add_argument("--max-json-kb", type=float, help="largest JSON body (default 64)")
    s.add_argument("--max-header-kb", type=float, help="largest request headers (default 16)")
    s.add_argument("--header-timeout-s", type=float, help="header read timeout (default 10)")
    s.add_argument("--keep-alive-s", type=float, help="idle keep-alive timeout (default 5)")
    s.add_argument("--shutdown-timeout-s", type=int, help="SIGTERM grace for requests (default 30)")
    s.add_argument("--limit-concurrency", type=int, help="503 past this (default 4096)")
    s.add_argument("--max-connections", type=int, help="close connections past this (4096)")
    s.add_argument("--max-polls-per-client", type=int, help="concurrent long-polls per key (4)")
    s.add_argument("--max-uploads-per-client", type=int, help="concurrent uploads per key (2)")
    s.add_argument("--lease-s", type=float, help="aggregation lease; a dead replica's work is "
                   "taken over within it (default 15)")  # fmt: skip
    s.add_argument("--upload-idle-s", type=float, help="drop an upload idle this long (30)")
    s.add_argument("--upload-min-kib-s", type=float, help="drop an upload slower than this (16)")
    s.add_argument(
        "--insecure-http",
        action="store_true",
        default=None,
        help="allow plain HTTP on a non-loopback address (TLS terminated by a proxy)",
    )
    s.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve /docs and /openapi.json (default on)",
    )
    s.add_argument("--metrics-token-file", type=Path, help="bearer token for /metrics")
    s.add_argument("--metrics-host", help="address of the separate metrics listener")
    s.add_argument("--metrics-port", type=int, help="serve /metrics without a token here")
    s.add_argument(
        "--presign-downloads",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with an S3 store, redirect downloads to presigned URLs (default on)",
    )
    s.set_defaults(run=_serve)

    c = sub.add_parser("create-federation", help="create a federation offline from a spec file")
    data_args(c, required=True)
    c.add_argument("--spec", type=Path, required=True, help="YAML or JSON federation spec")
    c.set_defaults(run=_create_federation)

    e = sub.add_parser("enroll", help="issue an enrollment token offline (prints it)")
    data_args(e, required=True)
    e.add_argument("--federation", required=True, help="federation id")
    e.add_argument("--uses", type=int, default=1)
    e.add_argument("--expires-in", type=int, default=7 * 24 * 3600, help="seconds")
    e.set_defaults(run=_enroll)

    o = sub.add_parser("export-openapi", help="write the OpenAPI document")
    o.add_argument("--output", default="docs/openapi.json", help="file, or - for stdout")
    o.set_defaults(run=_export_openapi)

    m = sub.add_parser("methods", help="trainable parameters and update size per tuning method")
    m.add_argument("--spec", type=Path, required=True)
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(run=_methods)

    add_admin_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (CliError, AdminError, DomainError, ValueError, OSError) as exc:
        print(f"fedtune-server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
