"""Every bad input to `fedtune-client` ends in one line on stderr and exit 1, no traceback,
also from the processes of `train --devices N`; an argument argparse refuses exits 2.

Runs the real CLI against a real aggregator process.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import shared.tuning  # noqa: F401  (registers the tiny model configs with open_clip)
from client_sdk import FedTuneClient
from client_sdk.credentials import Credentials, save
from lab.local_federation import (
    ServerProcess,
    client_command,
    free_port,
    quiet_env,
    start_server,
    train_args,
)
from shared.privacy import LocalDPSpec
from shared.spec import RoundsSpec, load_spec

pytestmark = [pytest.mark.e2e]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Env:
    server: ServerProcess
    fid: str
    classes: list[str]
    root: Path

    def register(self, name: str, fid: str | None = None) -> Path:
        """Register through the SDK (the register command itself is exercised elsewhere)."""
        token = self.server.admin().create_enrollment_token(fid or self.fid).token
        with FedTuneClient(self.server.url, allow_http=True) as client:
            reg = client.register_client(token, name)
        creds = self.root / f"{name}.json"
        save(Credentials(server=self.server.url, **reg.model_dump()), creds)
        return creds

    def data(self, name: str, folders: list[str] | None = None) -> Path:
        root = self.root / name
        for folder in folders if folders is not None else self.classes[:2]:
            path = root / folder / "a.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (10, 20, 30)).save(path)
        root.mkdir(parents=True, exist_ok=True)
        return root


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        client_command(*args), env=quiet_env(), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("cli")
    server = start_server(root / "server")
    spec = load_spec(EXAMPLES / "tiny-vit-lora.yaml")
    spec = spec.model_copy(update={"rounds": RoundsSpec(total=1, quorum=3, min_updates=3)})
    info = server.admin().create_federation(spec)
    yield Env(server, info.id, spec.task.classes, root)
    server.stop()


def _train(env: Env, creds: Path, data: Path) -> list[str]:
    return train_args(env.server, creds, data, env.root / f"work-{creds.stem}")


def _on_two_devices(args: list[str]) -> list[str]:
    return [*args, "--devices", "2"]


def _creds_file(env: Env, **override: str) -> Path:
    good = json.loads(env.register(f"c{len(list(env.root.iterdir()))}").read_text())
    good.update(override)
    path = env.root / f"edited-{len(list(env.root.iterdir()))}.json"
    path.write_text(json.dumps(good))
    return path


def unreachable_server(env: Env) -> list[str]:
    url = f"https://127.0.0.1:{free_port()}"
    return ["status", "--server", url, "--credentials", str(_creds_file(env, server=url)),
            "--max-retries", "0"]  # fmt: skip


def unreachable_server_on_two_devices(env: Env) -> list[str]:
    url = f"https://127.0.0.1:{free_port()}"
    creds = _creds_file(env, server=url)
    return _on_two_devices(["train", "--server", url, "--credentials", str(creds),
                            "--data", str(env.data("d-ok")), "--work-dir", str(env.root / "w-u"),
                            "--device", "cpu", "--quiet", "--max-retries", "0"])  # fmt: skip


def malformed_server_url(env: Env) -> list[str]:
    return ["register", "--server", "https://127.0.0.1:port", "--enrollment-token", "fte_x",
            "--name", "x", "--credentials", str(env.root / "never3.json")]  # fmt: skip


def binary_enrollment_token_file(env: Env) -> list[str]:
    token = env.root / "token.bin"
    token.write_bytes(b"\xff\xfe\x00fte")
    return ["register", "--server", env.server.url, "--enrollment-token-file", str(token),
            "--name", "x", "--credentials", str(env.root / "never4.json"), "--insecure-http"]  # fmt: skip


def plain_http_without_opt_in(env: Env) -> list[str]:
    return ["register", "--server", env.server.url, "--enrollment-token", "fte_x", "--name", "x",
            "--credentials", str(env.root / "never.json")]  # fmt: skip


def unknown_enrollment_token(env: Env) -> list[str]:
    return ["register", "--server", env.server.url, "--enrollment-token", "fte_bogus",
            "--name", "x", "--credentials", str(env.root / "never2.json"), "--insecure-http"]  # fmt: skip


def missing_credentials(env: Env) -> list[str]:
    return _train(env, env.root / "absent.json", env.data("d-ok"))


def wrong_api_key(env: Env) -> list[str]:
    return _train(env, _creds_file(env, api_key="ftk_wrong"), env.data("d-ok"))


def revoked_client(env: Env) -> list[str]:
    creds = env.register("revoked")
    env.server.admin().revoke_client(json.loads(creds.read_text())["client_id"])
    return _train(env, creds, env.data("d-ok"))


def data_dir_missing(env: Env) -> list[str]:
    return _train(env, env.register("dm"), env.root / "no-such-dir")


def data_dir_missing_on_two_devices(env: Env) -> list[str]:
    return _on_two_devices(_train(env, env.register("dm2"), env.root / "no-such-dir"))


def dp_sgd_on_two_devices(env: Env) -> list[str]:
    spec = load_spec(EXAMPLES / "tiny-vit-lora.yaml")
    dp = LocalDPSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    lt = spec.local_training.model_copy(update={"dp": dp})
    info = env.server.admin().create_federation(spec.model_copy(update={"local_training": lt}))
    return _on_two_devices(_train(env, env.register("dp2", fid=info.id), env.data("d-ok")))


def more_devices_than_gpus(env: Env) -> list[str]:
    devices = str(max(2, torch.cuda.device_count() + 1))  # one process never spawns
    return [*_train(env, env.register("gpu"), env.data("d-ok")), "--device", "cuda",
            "--devices", devices]  # fmt: skip


def data_dir_empty(env: Env) -> list[str]:
    return _train(env, env.register("de"), env.data("d-empty", folders=[]))


def class_folders_not_in_spec(env: Env) -> list[str]:
    return _train(env, env.register("dc"), env.data("d-cats", folders=["0", "cat", "dog"]))


def base_fingerprint_differs(env: Env) -> list[str]:
    ckpt = env.root / "tiny-clip.safetensors"
    _write_clip(ckpt, seed=1)
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    model = spec.model.model_copy(update={"pretrained": str(ckpt), "base_source": "local"})
    info = env.server.admin().create_federation(spec.model_copy(update={"model": model}))
    _write_clip(ckpt, seed=2)  # this organisation's copy of the weights differs
    return _train(env, env.register("fp", fid=info.id), env.data("d-ok"))


def _write_clip(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    clip = open_clip.create_model("fedtune-tiny-clip")
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))


CASES: list[tuple[Callable[[Env], list[str]], str]] = [
    (unreachable_server, "cannot reach https://127.0.0.1"),
    (unreachable_server_on_two_devices, "cannot reach https://127.0.0.1"),
    (malformed_server_url, "must look like https://host[:port]"),
    (binary_enrollment_token_file, "is not text"),
    (plain_http_without_opt_in, "refusing plain http://"),
    (unknown_enrollment_token, "enrollment"),
    (missing_credentials, "run `fedtune-client register` first"),
    (wrong_api_key, "refused this client's API key"),
    (revoked_client, "refused this client's API key"),
    (data_dir_missing, "does not exist"),
    (data_dir_missing_on_two_devices, "does not exist"),
    (dp_sgd_on_two_devices, "local_training.dp trains in one process"),
    (more_devices_than_gpus, "CUDA device"),  # none on this machine, or one too few
    (data_dir_empty, "holds no images"),
    (class_folders_not_in_spec, "class folders not in the federation's classes: cat, dog"),
    (base_fingerprint_differs, "fingerprint"),
]


@pytest.mark.parametrize(("make_args", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_is_one_line_on_stderr_and_exit_1(env, make_args, message):
    args = make_args(env)

    done = run(*args)

    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert errors[0].startswith("fedtune-client: error: ")


REFUSED_ARGUMENTS = {
    "negative --num-workers": (["--num-workers", "-1"], "--num-workers: '-1' is not a whole"),
    "zero --devices": (["--devices", "0"], "--devices: '0' is not a whole number >= 1"),
}


@pytest.mark.parametrize(("extra", "message"), REFUSED_ARGUMENTS.values(), ids=REFUSED_ARGUMENTS)
def test_a_bad_train_argument_is_refused_before_connecting_with_exit_2(tmp_path, extra, message):
    done = run("train", "--data", str(tmp_path), "--credentials", str(tmp_path / "c.json"), *extra)

    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and message in errors[0], done.stderr
