"""Run a whole federation on one machine: the aggregator and clients as processes.

Used by `make demo`, the end-to-end tests and the client benchmark. The
aggregator is started as its own `fedtune-server serve` process (never
imported), clients as `fedtune-client` processes, all on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from client_sdk._client import FedTuneClient

__all__ = [
    "ClientProcess",
    "ServerProcess",
    "client_command",
    "free_port",
    "register",
    "start_server",
    "train_args",
]

READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(name: str, module: str) -> list[str]:
    """The installed console script beside this interpreter, else `python -m module`."""
    candidate = Path(sys.executable).with_name(name)
    return [str(candidate)] if candidate.exists() else [sys.executable, "-m", module]


def client_command(*args: str) -> list[str]:
    return [*_script("fedtune-client", "client_sdk.cli"), *args]


def server_command(*args: str) -> list[str]:
    return [*_script("fedtune-server", "aggregator_service.cli"), *args]


def quiet_env(threads: int = 1, **extra: str) -> dict[str, str]:
    """Environment for child processes: offline hubs, few threads each (cores are shared)."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    """A running `fedtune-server serve`; `stop()` ends it (SIGTERM, then SIGKILL).

    `restart()` serves the same data dir with the same arguments again, on a new port.
    """

    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    ca_cert: Path | None = None
    admin_token_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    _args: Sequence[str] = field(default=(), repr=False)
    _env: dict[str, str] | None = field(default=None, repr=False)

    @property
    def admin_token_file(self) -> Path:
        """The token file passed with --admin-token-file, else the one serve generates."""
        return self.admin_token_path or self.data_dir / "admin-token"

    @property
    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    def transport_args(self) -> list[str]:
        """The client flags that reach this server: trust its CA, else allow plain http."""
        return ["--insecure-http"] if self.ca_cert is None else ["--ca-cert", str(self.ca_cert)]

    def admin(self) -> FedTuneClient:
        return self.client(self.admin_token)

    def client(self, api_key: str) -> FedTuneClient:
        """An SDK client of this server sending `api_key`."""
        return FedTuneClient(
            self.url,
            api_key=api_key,
            ca_cert=self.ca_cert,
            allow_http=self.ca_cert is None,
        )

    def http(self, api_key: str | None = None, timeout: float = 60) -> httpx.Client:
        """A raw HTTP client on the server, sending `api_key` (default: the admin token)."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key or self.admin_token}"},
            verify=_verify(self.ca_cert),
            timeout=timeout,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL, as a crash: the server gets no chance to clean up."""
        self.stop(signal.SIGKILL)

    def restart(self, env: dict[str, str] | None = None) -> ServerProcess:
        """Stop if running, then start again on a new port; `env` replaces the environment."""
        self.stop()
        if env is not None:
            self._env = env
        port = free_port()
        self.url = _url(port, self.ca_cert)
        self._log = self.log_path.open("ab")
        self.proc = _spawn(self._args, port, self._log, self._env)
        _wait_ready(self)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_server(
    data_dir: Path,
    *,
    port: int | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    admin_token_file: Path | None = None,
) -> ServerProcess:
    """Start the aggregator and wait until `/readyz` answers. `tls` = (cert, key, CA).

    Without `admin_token_file` the server generates its admin token in the data dir.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = ["--data-dir", str(data_dir)]
    ca = None
    if tls is not None:
        cert, key, ca = tls
        args += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    if admin_token_file is not None:
        args += ["--admin-token-file", str(admin_token_file)]
    args += extra_args
    log_path = data_dir / "server.log"
    log = log_path.open("ab")
    proc = _spawn(args, port, log, env)
    server = ServerProcess(
        _url(port, ca), data_dir, proc, log_path, ca, admin_token_file, log, args, env
    )
    _wait_ready(server)
    return server


def _url(port: int, ca_cert: Path | None) -> str:
    return f"{'http' if ca_cert is None else 'https'}://127.0.0.1:{port}"


def _spawn(
    args: Sequence[str], port: int, log: IO[bytes], env: dict[str, str] | None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        server_command("serve", "--host", "127.0.0.1", "--port", str(port), *args),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env or quiet_env(threads=1),
    )


def _verify(ca_cert: Path | None) -> ssl.SSLContext | bool:
    return True if ca_cert is None else ssl.create_default_context(cafile=str(ca_cert))


def _wait_ready(server: ServerProcess) -> None:
    verify = _verify(server.ca_cert)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"fedtune-server exited early:\n{server.log_tail()}")
        try:
            r = httpx.get(f"{server.url}/readyz", timeout=2, verify=verify)
            if r.status_code == 200 and server.admin_token_file.exists():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"fedtune-server not ready after {READY_TIMEOUT_S}s:\n{server.log_tail()}")


def register(server: ServerProcess, token: str, name: str, credentials: Path, *extra: str) -> None:
    """Register an organisation with `fedtune-client register`; raise with its stderr on failure."""
    cmd = client_command(
        "register", "--server", server.url, "--name", name,
        "--credentials", str(credentials), *server.transport_args(), *extra,
    )  # fmt: skip
    env = quiet_env(FEDTUNE_ENROLLMENT_TOKEN=token)  # not on the command line (`ps` shows that)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"fedtune-client register {name} failed:\n{done.stderr}")


def train_args(server: ServerProcess, credentials: Path, data: Path, work_dir: Path) -> list[str]:
    """Arguments of a quiet CPU `fedtune-client train` against `server`."""
    return [
        "train", "--server", server.url, "--credentials", str(credentials), "--data", str(data),
        "--work-dir", str(work_dir), "--device", "cpu", "--quiet", *server.transport_args(),
    ]  # fmt: skip


@dataclass
class ClientProcess:
    """A running `fedtune-client train`, its output going to `log_path`."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_client(
    name: str, args: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None
) -> ClientProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            client_command(*args), stdout=log, stderr=subprocess.STDOUT, env=env or quiet_env()
        )
    return ClientProcess(name, proc, log_path)
