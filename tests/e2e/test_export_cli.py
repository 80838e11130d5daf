"""`fedtune-client export`, `evaluate` and `predict` against a real server, as subprocesses.

A one-round federation of one real `fedtune-client train` runs to completion
once for the module; its final model is exported and loaded with open_clip
alone (its logits are those of FedTune's model built from what the training
client saved), evaluated (figures and a valid PNG) and used to classify
images. Bad inputs end in one line on stderr and exit 2.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from client_sdk.inference import saved_final_model
from lab.local_federation import (
    ServerProcess,
    client_command,
    quiet_env,
    register,
    start_client,
    train_args,
)
from shared.spec import RoundsSpec, load_spec
from tests.images import write_image_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _images(root: Path, classes: list[str]) -> Path:
    return write_image_folder(root, classes, 2, mean=lambda c, _i: 25 * c, std=30)


class Org:
    """One registered organisation and its `fedtune-client` command line."""

    def __init__(self, server: ServerProcess, root: Path, token: str) -> None:
        self.server, self.root = server, root
        self.credentials = root / "credentials.json"
        self.work = root / "work"
        register(server, token, "org-a", self.credentials)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = client_command(
            *args, "--credentials", str(self.credentials), "--work-dir", str(self.work),
            *self.server.transport_args(),
        )  # fmt: skip
        return subprocess.run(
            cmd, env=env or quiet_env(), capture_output=True, text=True, timeout=300, cwd=self.root
        )


def _refused(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@dataclass
class Federation:
    org: Org
    id: str
    base_fingerprint: str
    data: Path
    final_version: str | None = None


@pytest.fixture(scope="module")
def completed(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """A one-round federation that one real `fedtune-client train` ran to completion."""
    root = tmp_path_factory.mktemp("completed")
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    lt = spec.local_training.model_copy(update={"epochs": 1, "batch_size": 8, "max_steps": 2})
    rounds = RoundsSpec(total=1, quorum=1, min_updates=1, deadline_s=600)
    admin = server.admin()
    info = admin.create_federation(spec.model_copy(update={"rounds": rounds, "local_training": lt}))
    org = Org(server, root, admin.create_enrollment_token(info.id).token)
    data = _images(root / "data", list(spec.task.classes))
    train = start_client("org-a", train_args(server, org.credentials, data, org.work), root / "log")
    assert train.wait(timeout=600) == 0, train.output()[-3000:]
    final_version = admin.list_rounds(info.id)[-1].result_version
    return Federation(org, info.id, info.base_fingerprint, data, final_version)


@pytest.fixture(scope="module")
def running(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """A federation whose first round is open (no client trained)."""
    root = tmp_path_factory.mktemp("running")
    admin = server.admin()
    info = admin.create_federation(load_spec(EXAMPLES / "tiny-clip-bias.yaml"))
    org = Org(server, root, admin.create_enrollment_token(info.id).token)
    return Federation(org, info.id, info.base_fingerprint, _images(root / "data", ["0", "1"]))


def test_the_final_model_exports_as_open_clip_and_gives_fedtune_logits(
    completed: Federation, tmp_path: Path
) -> None:
    org, out = completed.org, tmp_path / "export"
    assert completed.final_version is not None

    exported = org.run("export", "--format", "open_clip", "--out", str(out))

    assert exported.returncode == 0, exported.stderr
    assert f"version {completed.final_version[:12]}, round 1" in exported.stdout
    meta = json.loads((out / "fedtune_export.json").read_text())
    assert (meta["version"], meta["round"]) == (completed.final_version, 1)
    assert (meta["federation"], meta["base_fingerprint"]) == (
        completed.id,
        completed.base_fingerprint,
    )
    # open_clip alone gives the logits of FedTune's model built from the client's final state
    fedtune = saved_final_model(org.work / "final")
    assert fedtune.version == completed.final_version
    clip = open_clip.create_model(
        "fedtune-tiny-clip", pretrained=str(out / "open_clip_model.safetensors")
    ).eval()
    head = load_file(out / "classifier.safetensors")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = head["scale"] * F.normalize(clip.encode_image(x), dim=-1) @ head["classifier"].T
        torch.testing.assert_close(logits, fedtune.built.model(x), atol=1e-4, rtol=0)


def test_a_non_empty_out_is_refused_then_replaced_with_force(
    completed: Federation, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "mine.txt").write_text("keep")

    _refused(completed.org.run("export", "--format", "safetensors", "--out", str(out)), "--force")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]

    again = completed.org.run(
        "export", "--format", "safetensors", "--out", str(out), "--force", "--version", "1"
    )

    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["fedtune_export.json", "model.safetensors"]


def test_evaluate_prints_the_figures_and_writes_json_and_png(
    completed: Federation, tmp_path: Path
) -> None:
    done = completed.org.run("evaluate", "--data", str(completed.data), "--out", str(tmp_path))

    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "evaluation.json").read_text())
    assert figures["examples"] == 20 and figures["version"] == completed.final_version
    assert f"top-1 accuracy {figures['accuracy']:.4f} on 20 images" in done.stdout
    assert sum(c["total"] for c in figures["per_class"]) == 20
    with Image.open(tmp_path / "confusion_matrix.png") as png:
        png.verify()
        assert png.format == "PNG"


def test_predict_ranks_classes_as_json_or_a_table(completed: Federation) -> None:
    data = completed.data
    images = [str(data / "3" / "0.png"), str(data / "7" / "1.png")]

    as_json = completed.org.run("predict", *images, "--top", "3", "--json")
    table = completed.org.run("predict", images[0], "--top", "2", "--version", "0")

    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [r["image"] for r in rows] == images
    for row in rows:
        probabilities = [c["probability"] for c in row["top"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["image", "rank", "class", "probability"] and len(lines) == 3


def test_predict_refuses_an_unreadable_image_by_name(completed: Federation, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")

    done = completed.org.run("predict", str(completed.data / "3" / "0.png"), str(broken))

    _refused(done, f"cannot read image {broken}")


def test_the_final_model_of_a_running_federation_is_refused(
    running: Federation, tmp_path: Path
) -> None:
    done = running.org.run("export", "--format", "open_clip", "--out", str(tmp_path / "out"))

    _refused(done, f"federation {running.id} is not completed", "--version N")
    assert not (tmp_path / "out").exists()


def test_evaluate_without_matplotlib_prints_the_figures_and_how_to_get_the_png(
    running: Federation, tmp_path: Path
) -> None:
    hidden = tmp_path / "no-plots" / "matplotlib"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = quiet_env(PYTHONPATH=str(hidden.parent))
    out = tmp_path / "ev"

    done = running.org.run(
        "evaluate", "--data", str(running.data), "--version", "0", "--out", str(out), env=env
    )

    assert done.returncode == 0, done.stderr
    assert "top-1 accuracy" in done.stdout and "on 4 images" in done.stdout
    assert done.stderr.strip().splitlines() == [
        "fedtune-client: the confusion-matrix PNG needs matplotlib: pip install 'fedtune[plots]'"
    ]
    assert (out / "evaluation.json").is_file()
    assert not (out / "confusion_matrix.png").exists()
