"""Evaluating and using a federated model on image files: figures, the PNG, predictions."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from client_sdk import (
    FederatedModel,
    UsageError,
    evaluate_model,
    federated_model,
    predict_images,
    save_evaluation,
)
from client_sdk.evaluate import PLOTS_HINT
from client_sdk.training import accuracy
from shared.spec import load_spec
from shared.tuning import build

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CLASSES = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]


@pytest.fixture(scope="module")
def model() -> FederatedModel:
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    built = build(spec)
    generator = torch.Generator().manual_seed(5)
    state = {
        n: t + 0.1 * torch.randn(t.shape, generator=generator)
        for n, t in built.trainable_state().items()
    }
    return federated_model(spec, state, built.base_state())


def _folder(root: Path, per_class: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate(per_class.items()):
        for i in range(n):
            pixels = np.clip(30 * c + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_figures_agree_with_predictions_and_the_training_accuracy(
    model: FederatedModel, tmp_path: Path
) -> None:
    data = _folder(tmp_path / "data", {"0": 3, "1": 2, "4": 4})
    files = [sorted((data / c).glob("*.png")) for c in ("0", "1", "4")]

    report = evaluate_model(model, data)

    assert report.examples == 9 and report.skipped == []
    totals = {c.name: c.total for c in report.per_class if c.total}
    assert totals == {"0": 3, "1": 2, "4": 4}
    assert [c.accuracy for c in report.per_class if not c.total] == [None] * 7
    confusion = torch.tensor(report.confusion)
    assert confusion.shape == (10, 10) and int(confusion.sum()) == 9
    assert report.accuracy == pytest.approx(int(confusion.trace()) / 9)
    # each image's top prediction lands in its row of the confusion matrix
    predictions = predict_images(model, [f for group in files for f in group], top=1)
    predicted = torch.zeros(10, 10, dtype=torch.long)
    for p in predictions:
        true = int(Path(p.image).parent.name)
        predicted[true, int(p.top[0].label)] += 1
    assert predicted.tolist() == report.confusion
    # the figure is the training client's held-out accuracy function's
    transform = model.built.transform(train=False)
    images = torch.stack([transform(Image.open(p.image)) for p in predictions])
    labels = torch.tensor([int(Path(p.image).parent.name) for p in predictions])
    assert accuracy(model.built.model, [(images, labels)]) == report.accuracy


def test_an_unreadable_image_is_left_out_and_named(model: FederatedModel, tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", {"2": 2})
    (data / "2" / "broken.png").write_bytes(b"not an image")

    report = evaluate_model(model, data)

    assert report.examples == 2
    assert report.skipped == [str(data / "2" / "broken.png")]


def test_saved_figures_are_json_and_a_valid_png(model: FederatedModel, tmp_path: Path) -> None:
    report = evaluate_model(model, _folder(tmp_path / "data", {"3": 2, "7": 2}))

    saved = save_evaluation(report, tmp_path / "out")

    assert json.loads(saved.json_path.read_text()) == json.loads(report.model_dump_json())
    assert saved.png_path is not None
    with Image.open(saved.png_path) as png:
        png.verify()
        assert png.format == "PNG" and png.size[0] >= 300


def test_without_matplotlib_the_json_is_still_written(
    model: FederatedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = evaluate_model(model, _folder(tmp_path / "data", {"5": 1}))
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    saved = save_evaluation(report, tmp_path / "out")

    assert saved.png_path is None and saved.json_path.is_file()
    assert not (tmp_path / "out" / "confusion_matrix.png").exists()
    assert "pip install 'fedtune[plots]'" in PLOTS_HINT


def test_predictions_are_ranked_probabilities(model: FederatedModel, tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", {"6": 2})
    images = sorted((data / "6").glob("*.png"))

    everything = predict_images(model, images, top=100)
    top3 = predict_images(model, images, top=3)

    for full, short in zip(everything, top3, strict=True):
        probabilities = [c.probability for c in full.top]
        assert len(full.top) == 10 and sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert probabilities == sorted(probabilities, reverse=True)
        assert short.top == full.top[:3]
        assert sorted(c.label for c in full.top) == CLASSES


def test_an_unreadable_image_is_refused_by_name(model: FederatedModel, tmp_path: Path) -> None:
    good = _folder(tmp_path / "data", {"1": 1}) / "1" / "0.png"
    bad = tmp_path / "notes.png"
    bad.write_text("hello")

    with pytest.raises(UsageError, match=f"^cannot read image {bad}: "):
        predict_images(model, [good, bad])
    with pytest.raises(UsageError, match="no such file"):
        predict_images(model, [tmp_path / "missing.png"])
