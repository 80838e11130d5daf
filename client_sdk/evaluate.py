"""Use a federated model: its accuracy on a labelled image folder, and predictions for images.

`evaluate_model` reads an image folder laid out like the training data (one
folder per class, see `client_sdk.data`) and reports top-1 accuracy, through
the same held-out accuracy function the training client reports
(`client_sdk.training.accuracy`), with per-class accuracy and the confusion
matrix. An unreadable image is left out and named, as in training.
`save_evaluation` writes the figures as JSON and the confusion matrix as a
PNG (matplotlib, the `plots` extra). `predict_images` gives each image's top
classes with probabilities; an image that cannot be read is refused by name.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel
from torch import nn
from torch.utils.data import DataLoader

from client_sdk._exceptions import UsageError
from client_sdk.data import ImageDataset, collate_readable, load_local_data
from shared.blobs import atomic_write_bytes

if TYPE_CHECKING:  # the model libraries load on first use (see `client_sdk`)
    from client_sdk.inference import FederatedModel

__all__ = [
    "ClassAccuracy",
    "ClassProbability",
    "EvaluationReport",
    "ImagePrediction",
    "PlotsUnavailableError",
    "SavedEvaluation",
    "classify_images",
    "evaluate_model",
    "predict_images",
    "read_image",
    "save_evaluation",
]

EVAL_BATCH = 64
PLOTS_HINT = "the confusion-matrix PNG needs matplotlib: pip install 'fedtune[plots]'"


class ClassAccuracy(BaseModel):
    name: str
    correct: int
    total: int
    accuracy: float | None  # None where the folder holds no image of the class


class EvaluationReport(BaseModel):
    """Figures of one model version on one labelled image folder."""

    data: str
    version: str | None
    round: int | None
    examples: int
    accuracy: float
    per_class: list[ClassAccuracy]
    classes: list[str]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    skipped: list[str]  # unreadable images, left out


class SavedEvaluation(BaseModel):
    json_path: Path
    png_path: Path | None  # None when matplotlib is not installed


class ClassProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    image: str
    top: list[ClassProbability]


class PlotsUnavailableError(ImportError):
    """matplotlib (the `plots` extra) is not installed."""


class _Recorder(nn.Module):
    """The model, noting each batch's predicted classes as `accuracy` runs it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.predicted: list[torch.Tensor] = []

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(pixel_values)
        self.predicted.append(logits.argmax(-1).cpu())
        return logits


def evaluate_model(
    model: FederatedModel, data: str | Path, *, device: torch.device | None = None
) -> EvaluationReport:
    """Top-1 and per-class accuracy and the confusion matrix of `model` on `data`."""
    from client_sdk.training import accuracy

    classes = model.classes
    local = load_local_data(data, classes)
    dataset = ImageDataset(local.samples, model.built.transform(train=False))
    loader = DataLoader(dataset, batch_size=EVAL_BATCH, collate_fn=collate_readable)
    labels: list[torch.Tensor] = []
    skipped: list[str] = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, batch_labels, unreadable in loader:
            skipped.extend(str(local.samples[i][0]) for i in unreadable)
            if len(batch_labels):
                labels.append(batch_labels)
                yield images, batch_labels

    recorder = _Recorder(model.built.model)
    top1 = accuracy(recorder.to(device) if device else recorder, batches(), device)
    n = len(classes)
    confusion = torch.zeros(n * n, dtype=torch.long)
    if labels:
        cells = torch.cat(labels).long() * n + torch.cat(recorder.predicted).long()
        confusion = torch.bincount(cells, minlength=n * n)
    confusion = confusion.view(n, n)
    correct, totals = confusion.diagonal().tolist(), confusion.sum(dim=1).tolist()
    per_class = [
        ClassAccuracy(
            name=name,
            correct=correct[i],
            total=totals[i],
            accuracy=correct[i] / totals[i] if totals[i] else None,
        )
        for i, name in enumerate(classes)
    ]
    return EvaluationReport(
        data=str(data),
        version=model.version,
        round=model.round,
        examples=int(confusion.sum()),
        accuracy=top1,
        per_class=per_class,
        classes=classes,
        confusion=confusion.tolist(),
        skipped=skipped,
    )


def save_evaluation(report: EvaluationReport, out: str | Path) -> SavedEvaluation:
    """`evaluation.json` and, with matplotlib, `confusion_matrix.png` under `out`.

    Without matplotlib the JSON is still written and `png_path` is None.
    """
    out = Path(out)
    json_path = out / "evaluation.json"
    atomic_write_bytes(json_path, (report.model_dump_json(indent=2) + "\n").encode())
    png_path = out / "confusion_matrix.png"
    try:
        png = confusion_png(report)
    except PlotsUnavailableError:
        return SavedEvaluation(json_path=json_path, png_path=None)
    atomic_write_bytes(png_path, png)
    return SavedEvaluation(json_path=json_path, png_path=png_path)


def confusion_png(report: EvaluationReport) -> bytes:
    """The confusion matrix drawn as a PNG (counts in the cells, true classes as rows)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailableError(PLOTS_HINT) from None
    n = len(report.classes)
    side = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(side, side), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(report.confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), report.classes, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), report.classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"top-1 accuracy {report.accuracy:.3f} on {report.examples} images")
    peak = max((max(row) for row in report.confusion), default=0)
    if n <= 30:
        for i, row in enumerate(report.confusion):
            for j, count in enumerate(row):
                colour = "white" if peak and count > peak / 2 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def read_image(path: Path) -> Image.Image:
    """The image at `path` as RGB; `UsageError` naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise UsageError(f"cannot read image {path}: no such file") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cannot read image {path}: {reason}") from None


def predict_images(
    model: FederatedModel,
    images: Sequence[str | Path],
    *,
    top: int = 5,
    device: torch.device | None = None,
) -> list[ImagePrediction]:
    """Each image's `top` most probable classes (softmax of the logits), most probable first.

    Every image is read before any is classified: one that cannot be read
    raises `UsageError` naming it.
    """
    decoded = [(str(p), read_image(Path(p))) for p in images]
    return classify_images(model, decoded, top=top, device=device)


@torch.no_grad()
def classify_images(
    model: FederatedModel,
    images: Sequence[tuple[str, Image.Image]],
    *,
    top: int = 5,
    device: torch.device | None = None,
) -> list[ImagePrediction]:
    """`predict_images` for images already read, each with the name its prediction carries."""
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    if not images:
        raise UsageError("no images to classify")
    transform = model.built.transform(train=False)
    pixels = [transform(image) for _, image in images]
    net = model.built.model.eval()
    if device is not None:
        net = net.to(device)
    k = min(top, len(model.classes))
    results = []
    for start in range(0, len(pixels), EVAL_BATCH):
        batch = torch.stack(pixels[start : start + EVAL_BATCH])
        batch = batch.to(device) if device is not None else batch
        probabilities = net(batch).float().softmax(-1)
        values, indices = probabilities.topk(k, dim=-1)
        for offset, (row_p, row_i) in enumerate(
            zip(values.tolist(), indices.tolist(), strict=True)
        ):
            ranked = [
                ClassProbability(label=model.classes[i], probability=p)
                for p, i in zip(row_p, row_i, strict=True)
            ]
            results.append(ImagePrediction(image=images[start + offset][0], top=ranked))
    return results
