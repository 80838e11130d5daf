"""`fedtune-client`: register an organisation, train in a federation, show its status,
rotate its API key; export, evaluate and use the federated model.

Every failure a user can cause ends in one line on stderr and a non-zero exit
(2 for a bad argument or input file), never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client_sdk import _constants as C
from client_sdk import credentials as creds_mod
from client_sdk._client import FedTuneClient
from client_sdk._exceptions import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    FedTuneError,
    UsageError,
)
from client_sdk.credentials import Credentials
from client_sdk.workdir import safe_id
from shared.spec import FederationSpec

__all__ = ["main", "protections"]

PROG = "fedtune-client"
ENV_ENROLLMENT_TOKEN = "FEDTUNE_ENROLLMENT_TOKEN"
ENV_RETRY_FOR = "FEDTUNE_RETRY_FOR"
# `client_sdk.export.EXPORT_FORMATS`, spelled out: that module imports every model library
EXPORT_CHOICES = ("open_clip", "hf", "safetensors")
DEVICES = ("auto", "cpu", "cuda", "mps")  # `--device` of train, evaluate and predict
log = logging.getLogger("client_sdk")


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear the progress bars apart."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


class _DropRandomInitNotice(logging.Filter):
    """open_clip warns that it initialised randomly; the client then loads the real base."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def _setup_logging(name: str | None) -> None:
    handler = _TqdmHandler()
    prefix = f"{PROG}[{name}]" if name else PROG
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix} %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    root = logging.getLogger()
    if not any(isinstance(f, _DropRandomInitNotice) for f in root.filters):
        root.addFilter(_DropRandomInitNotice())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Take part in a FedTune federation.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, server_required: bool) -> None:
        p.add_argument("--server", required=server_required, help="aggregator URL (https://…)")
        p.add_argument(
            "--credentials",
            type=Path,
            help="credentials file (default: the user config dir, or $FEDTUNE_CREDENTIALS)",
        )
        p.add_argument("--ca-cert", type=Path, help="PEM of a private CA to trust")
        p.add_argument(
            "--insecure-http",
            action="store_true",
            help="allow a plain http:// server (only on a network you trust)",
        )
        p.add_argument(
            "--retry-for",
            type=_seconds,
            metavar="SECONDS",
            help="keep retrying a failed request (connection errors, timeouts, 408, 429, 5xx) "
            f"this long from its first failure (default: ${ENV_RETRY_FOR}, "
            f"else {C.DEFAULT_RETRY_FOR_S:g}; 0: never retry)",
        )
        p.add_argument(
            "--max-retries",
            type=int,
            default=C.DEFAULT_MAX_RETRIES,
            help="also stop after this many retries of one request (default: no limit)",
        )

    reg = sub.add_parser("register", help="join a federation with an enrollment token")
    common(reg, server_required=True)
    token = reg.add_mutually_exclusive_group()
    token.add_argument(
        "--enrollment-token-file",
        metavar="PATH",
        help=f"read the fte_… token from PATH, or from stdin with `-` (or set ${ENV_ENROLLMENT_TOKEN})",
    )
    token.add_argument(
        "--enrollment-token",
        help="the token itself (visible in `ps` and shell history; prefer --enrollment-token-file)",
    )
    reg.add_argument("--name", required=True, help="this organisation's name")
    reg.add_argument("--force", action="store_true", help="overwrite existing credentials")

    train = sub.add_parser("train", help="train in the federation until it completes")
    common(train, server_required=False)
    train.add_argument("--data", type=Path, required=True, help="ImageFolder dir or path,label CSV")
    train.add_argument("--device", choices=DEVICES, default="auto")
    train.add_argument("--work-dir", type=Path, help="default: ./.fedtune/<client>")
    train.add_argument("--val-fraction", type=float, default=0.1, help="local validation split")
    train.add_argument("--quiet", action="store_true", help="no progress bars, log lines only")
    train.add_argument(
        "--num-workers",
        type=_non_negative,
        help="image-decoding worker processes per device (default: the cores less one, at most 8)",
    )
    train.add_argument(
        "--devices",
        type=_positive,
        default=1,
        help="devices to train on with DistributedDataParallel, one process each (default 1)",
    )

    status = sub.add_parser("status", help="federation, current round, this client's updates")
    common(status, server_required=False)

    rotate = sub.add_parser(
        "rotate-key", help="replace this client's API key and rewrite the credentials file"
    )
    common(rotate, server_required=False)
    _model_parsers(sub, common)
    return parser


def _model_parsers(sub: Any, common: Callable[[argparse.ArgumentParser, bool], None]) -> None:
    """`export`, `evaluate`, `predict`: the federated model, by default the final version."""

    def model_options(p: argparse.ArgumentParser) -> None:
        common(p, False)
        p.add_argument(
            "--version",
            metavar="N",
            help="the global state after round N (0 = initial) or its sha256 "
            "(default: the final version, once the federation completed)",
        )
        p.add_argument(
            "--work-dir",
            type=Path,
            help="where the base is cached (default: ./.fedtune/<client>, as for train)",
        )

    export = sub.add_parser("export", help="write the federated model as a standard checkpoint")
    model_options(export)
    export.add_argument(
        "--format",
        choices=EXPORT_CHOICES,
        required=True,
        help="open_clip (open_clip models), hf (hf_vit models) or safetensors (either)",
    )
    export.add_argument("--out", type=Path, required=True, help="directory to write")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")

    evaluate = sub.add_parser(
        "evaluate", help="accuracy, per-class accuracy and confusion matrix on labelled images"
    )
    model_options(evaluate)
    evaluate.add_argument(
        "--data", type=Path, required=True, help="ImageFolder dir (one folder per class) or CSV"
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        default=Path("evaluation"),
        help="where evaluation.json and confusion_matrix.png go (default: ./evaluation)",
    )
    evaluate.add_argument("--device", choices=DEVICES, default="auto")

    predict = sub.add_parser("predict", help="each image's most probable classes")
    model_options(predict)
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--top", type=_positive, default=5, help="classes per image (default 5)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--device", choices=DEVICES, default="auto")


def _positive(raw: str) -> int:
    """A whole number >= 1 (an argparse type)."""
    if raw.strip().isdigit() and int(raw) >= 1:
        return int(raw)
    raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number >= 1")


def _non_negative(raw: str) -> int:
    """A whole number >= 0 (an argparse type)."""
    if raw.strip().isdigit():
        return int(raw)
    raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number >= 0")


def _seconds(raw: str) -> float:
    """A non-negative, finite number of seconds (an argparse type)."""
    try:
        seconds = float(raw)
        if 0 <= seconds < math.inf:
            return seconds
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds >= 0")


def _retry_for(args: argparse.Namespace) -> float:
    """--retry-for, else $FEDTUNE_RETRY_FOR, else the default budget."""
    if args.retry_for is not None:
        return float(args.retry_for)
    raw = os.environ.get(ENV_RETRY_FOR, "").strip()
    if not raw:
        return C.DEFAULT_RETRY_FOR_S
    try:
        return _seconds(raw)
    except argparse.ArgumentTypeError as exc:
        raise FedTuneError(f"${ENV_RETRY_FOR}: {exc}") from None


def _same_server(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _load_creds(args: argparse.Namespace) -> tuple[Credentials, str]:
    path = args.credentials or creds_mod.default_credentials_path()
    creds = creds_mod.load(path)
    server = args.server or creds.server
    if not _same_server(server, creds.server):
        raise FedTuneError(
            f"credentials in {path} are for {creds.server}, not {server}; pass the "
            "--credentials file written when registering with that server"
        )
    return creds, server


def _client(
    args: argparse.Namespace, server: str, api_key: str | None, ca: str | None
) -> FedTuneClient:
    ca_cert = args.ca_cert or ca
    return FedTuneClient(
        server,
        api_key=api_key,
        ca_cert=ca_cert,
        allow_http=args.insecure_http,
        max_retries=None if args.max_retries is None else max(0, args.max_retries),
        retry_for_s=_retry_for(args),
    )


def _enrollment_token(args: argparse.Namespace) -> str:
    """The token from --enrollment-token-file (`-` is stdin), the environment, or the flag."""
    if args.enrollment_token is not None:
        print(
            f"{PROG}: warning: --enrollment-token is visible to other users in `ps` and in shell "
            f"history; use --enrollment-token-file or ${ENV_ENROLLMENT_TOKEN}",
            file=sys.stderr,
        )
        token, source = args.enrollment_token, "--enrollment-token"
    elif args.enrollment_token_file is not None:
        path = args.enrollment_token_file
        source = "stdin" if path == "-" else path
        try:
            token = sys.stdin.readline() if path == "-" else Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise FedTuneError(
                f"the enrollment token from {source} is not text: expected the fte_… token"
            ) from None
    elif os.environ.get(ENV_ENROLLMENT_TOKEN):
        token, source = os.environ[ENV_ENROLLMENT_TOKEN], f"${ENV_ENROLLMENT_TOKEN}"
    else:
        raise FedTuneError(
            f"no enrollment token: pass --enrollment-token-file PATH (or `-` for stdin), "
            f"or set ${ENV_ENROLLMENT_TOKEN}"
        )
    token = token.strip()
    if not token:
        raise FedTuneError(f"the enrollment token from {source} is empty")
    return token


def _register(args: argparse.Namespace) -> int:
    path = args.credentials or creds_mod.default_credentials_path()
    if path.exists() and not args.force:
        raise FedTuneError(
            f"credentials already exist at {path}; pass --credentials NEW_FILE or --force"
        )
    token = _enrollment_token(args)
    with _client(args, args.server, None, None) as client:
        reg = client.register_client(token, args.name)
    ca = str(args.ca_cert.resolve()) if args.ca_cert else None
    creds = Credentials(server=client.base_url, ca_cert=ca, **reg.model_dump())
    creds_mod.save(creds, path)
    print(
        f"registered {reg.name} as {reg.client_id} in federation {reg.federation_id}; "
        f"credentials saved to {path} (mode 0600)"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from client_sdk.distributed import check_devices, participate_rank, spawn, torchrun_rank
    from client_sdk.participate import ParticipateOptions, participate
    from client_sdk.training import resolve_device

    creds, server = _load_creds(args)
    _setup_logging(creds.name)
    options = ParticipateOptions(
        federation_id=creds.federation_id,
        data=args.data,
        work_dir=args.work_dir or Path(".fedtune") / safe_id(creds.client_id, "client id"),
        device=args.device,
        val_fraction=args.val_fraction,
        progress=not args.quiet,
        organisation=creds.name,
        num_workers=args.num_workers,
    )
    ranks = torchrun_rank()
    if ranks is not None or args.devices > 1:
        connect = functools.partial(_client, args, server, creds.api_key, creds.ca_cert)
        if ranks is not None:
            participate_rank(ranks[0], ranks[1], connect, creds.client_id, options)
        else:
            check_devices(args.devices, resolve_device(args.device))
            spawn(
                participate_rank, args.devices, connect, creds.client_id, options, explain=_explain
            )
        if ranks is not None and ranks[0] != 0:
            return 0
        final = options.work_dir  # rank 0 saved the final state there
        print(f"federation {creds.federation_id} completed; final state under {final}")
        return 0
    with _client(args, server, creds.api_key, creds.ca_cert) as client:
        final = participate(client, creds.client_id, options)
    print(f"federation {creds.federation_id} completed; final trainable state saved to {final}")
    return 0


def _status(args: argparse.Namespace) -> int:
    creds, server = _load_creds(args)
    with _client(args, server, creds.api_key, creds.ca_cert) as client:
        info = client.get_federation(creds.federation_id)
        current = client.current_round(info.id)
        history = client.list_rounds(info.id)
        final = [e for e in client.list_evaluations(info.id) if e.final]
    print(f"federation {info.id} ({info.name}): {info.status}")
    print(f"privacy: {protections(info.spec)}")
    print(
        f"round {current.round}/{current.total_rounds}: {current.status}, "
        f"{current.received}/{current.quorum} updates, submitted by this client: "
        f"{'yes' if current.submitted else 'no'}"
    )
    mine = [(rec, p) for rec in history for p in rec.participants if p.client_id == creds.client_id]
    print(f"contributions of {creds.name} ({creds.client_id}): {len(mine)} round(s)")
    for rec, p in mine:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(p.metrics.items()))
        print(
            f"  round {rec.round} [{rec.status}]: {p.num_examples} examples, {p.bytes} B; {metrics}"
        )
    for e in final:
        print(
            f"final model (version {e.version[:12]}, round {e.round}): "
            f"val_accuracy={e.val_accuracy:.4g} on {e.val_examples} examples"
        )
    return 0


def protections(spec: FederationSpec) -> str:
    """What protects this organisation's updates in the federation `spec` describes, in one
    line: what to check before training (SECURITY.md says what each protects against)."""
    parts = []
    sa = spec.secure_aggregation
    if sa is not None:
        graph = "every other client" if sa.neighbours is None else f"{sa.neighbours} neighbours"
        parts.append(
            f"secure aggregation (SecAgg+, masks shared with {graph}): the service sees only "
            "the masked sum"
        )
    if spec.privacy is not None:
        p = spec.privacy
        parts.append(
            f"central DP (noise x{p.noise_multiplier:g} on the mean, stops at "
            f"epsilon {p.max_epsilon:g}, delta {p.delta:g}{_seeded(p.noise_source)})"
        )
    dp = spec.local_training.dp
    if dp is not None:
        parts.append(
            f"DP-SGD on each client (noise x{dp.noise_multiplier:g}, per-example gradient norm "
            f"{dp.max_grad_norm:g}, delta {dp.delta:g}{_seeded(dp.noise_source)})"
        )
    return "; ".join(parts) or "none (the service sees each update)"


def _seeded(source: str) -> str:
    return ", SEEDED noise: whoever holds the spec can subtract it" if source == "seeded" else ""


def _rotate_key(args: argparse.Namespace) -> int:
    """Rotate, save, then use the new key once (which ends the old one on the server).

    The Idempotency-Key is saved beside the credentials before the request, so running this
    again after a crash or a lost answer gets the same new key from the server (the old key
    stays valid until the new one is first used)."""
    path = args.credentials or creds_mod.default_credentials_path()
    creds, server = _load_creds(args)
    idempotency_key = creds_mod.pending_rotation(path, creds)
    with _client(args, server, creds.api_key, creds.ca_cert) as client:
        try:
            rotated = client.rotate_key(creds.client_id, idempotency_key=idempotency_key)
        except AuthenticationError as exc:
            raise FedTuneError(
                f"the server refused the key in {path}: {exc.detail} (revoked; or a rotation "
                "already finished elsewhere, so the new key is in another credentials file)"
            ) from None
        creds_mod.save(creds.model_copy(update={"api_key": rotated.api_key}), path)
        creds_mod.finish_rotation(path)
        try:
            client.get_federation(creds.federation_id)  # first use: the old key stops working
        except FedTuneError as exc:
            print(
                f"{PROG}: warning: could not use the new key yet ({_explain(exc)}); the old key "
                f"stays valid until it is, or {rotated.previous_key_valid_until} at the latest",
                file=sys.stderr,
            )
            return 0
    print(
        f"rotated the API key of {creds.name} ({creds.client_id}); saved to {path}; "
        "the old key no longer works (restart any `fedtune-client train` using it)"
    )
    return 0


def _model(args: argparse.Namespace) -> Any:
    """The federated model the command names (`--version`, else the final one)."""
    from client_sdk.inference import fetch_federated_model, parse_version

    version = parse_version(args.version) if args.version is not None else None
    creds, server = _load_creds(args)
    _setup_logging(creds.name)
    log.setLevel(logging.WARNING)  # the command's own output is the result
    work_dir = args.work_dir or Path(".fedtune") / safe_id(creds.client_id, "client id")
    with _client(args, server, creds.api_key, creds.ca_cert) as client:
        return fetch_federated_model(
            client, creds.federation_id, creds.client_id, work_dir, version=version
        )


def _described(model: Any) -> str:
    where = f", round {model.round}" if model.round is not None else ""
    return f"version {(model.version or '?')[:12]}{where}"


def _export(args: argparse.Namespace) -> int:
    from client_sdk.export import check_out, export_model

    check_out(args.out, args.force)  # before anything is downloaded
    model = _model(args)
    result = export_model(model, args.out, format=args.format, force=args.force)
    print(
        f"exported the {model.spec.method.name} model ({_described(model)}) as {args.format} "
        f"to {result.out}: {', '.join(result.files)}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from client_sdk.evaluate import PLOTS_HINT, evaluate_model, save_evaluation
    from client_sdk.training import resolve_device

    device = resolve_device(args.device)
    model = _model(args)
    report = evaluate_model(model, args.data, device=device)
    print(f"top-1 accuracy {report.accuracy:.4f} on {report.examples} images ({_described(model)})")
    width = max(len(c.name) for c in report.per_class)
    for c in report.per_class:
        figure = f"{c.accuracy:.4f}" if c.accuracy is not None else "n/a"
        print(f"  {c.name:<{width}}  {figure}  ({c.correct}/{c.total})")
    for file in report.skipped:
        print(f"{PROG}: warning: skipped unreadable image {file}", file=sys.stderr)
    saved = save_evaluation(report, args.out)
    print(f"figures written to {saved.json_path}")
    if saved.png_path is None:
        print(f"{PROG}: {PLOTS_HINT}", file=sys.stderr)
    else:
        print(f"confusion matrix written to {saved.png_path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from client_sdk.evaluate import classify_images, read_image
    from client_sdk.training import resolve_device

    # Read first: an unreadable image fails before anything is downloaded.
    images = [(str(path), read_image(path)) for path in args.images]
    device = resolve_device(args.device)
    model = _model(args)
    predictions = classify_images(model, images, top=args.top, device=device)
    if args.json:
        body = [p.model_dump() for p in predictions]
        print(json.dumps(body, indent=2))
        return 0
    width = max(len("image"), *(len(p.image) for p in predictions))
    label = max(len("class"), *(len(c.label) for p in predictions for c in p.top))
    print(f"{'image':<{width}}  {'rank':>4}  {'class':<{label}}  probability")
    for p in predictions:
        for rank, c in enumerate(p.top, start=1):
            name = p.image if rank == 1 else ""
            print(f"{name:<{width}}  {rank:>4}  {c.label:<{label}}  {c.probability:.4f}")
    return 0


def _explain(exc: BaseException) -> str:
    """One line a user can act on."""
    notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
    return _reason(exc) + notes


def _reason(exc: BaseException) -> str:
    if isinstance(exc, APIStatusError) and exc.code == "enrollment_invalid":
        return f"enrollment refused: {exc.detail}"
    if isinstance(exc, AuthenticationError):
        return (
            f"the server refused this client's API key: {exc.detail} "
            "(revoked, or credentials of another server?)"
        )
    if isinstance(exc, APIStatusError):
        return f"server answered {exc.status} {exc.code}: {exc.detail}"
    if isinstance(exc, APIConnectionError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(None)
    commands = {
        "register": _register,
        "train": _train,
        "status": _status,
        "rotate-key": _rotate_key,
        "export": _export,
        "evaluate": _evaluate,
        "predict": _predict,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (FedTuneError, OSError) as exc:
        print(f"{PROG}: error: {_explain(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
