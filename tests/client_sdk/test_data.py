"""Local data: ImageFolder and CSV mapped onto the spec's class order; bad data named."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from client_sdk.data import DataError, load_local_data, split_train_val

CLASSES = ["zero", "one", "two"]


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)
    return path


def test_image_folder_labels_follow_the_spec_order_not_the_folder_order(tmp_path):
    _png(tmp_path / "two" / "a.png")
    _png(tmp_path / "zero" / "b.png")

    data = load_local_data(tmp_path, CLASSES)

    assert sorted((p.parent.name, label) for p, label in data.samples) == [("two", 2), ("zero", 0)]


def test_loading_lists_files_without_decoding_them(tmp_path):
    _png(tmp_path / "one" / "ok.png")
    (tmp_path / "one" / "broken.png").write_bytes(b"not a png")

    data = load_local_data(tmp_path, CLASSES)

    assert sorted(p.name for p, _ in data.samples) == ["broken.png", "ok.png"]


def test_csv_of_path_label_with_header(tmp_path):
    _png(tmp_path / "img" / "x.png")
    _png(tmp_path / "img" / "y.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nimg/x.png,one\nimg/y.png,zero\n")

    data = load_local_data(csv, CLASSES)

    assert [(p.name, label) for p, label in data.samples] == [("x.png", 1), ("y.png", 0)]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no images"),
        ("unknown_folders", "class folders not in the federation's classes: cat, dog"),
        ("unknown_csv_label", "labels in .* not in the federation's classes: seven"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "empty":
        root.mkdir()
    elif layout == "unknown_folders":
        _png(root / "cat" / "a.png")
        _png(root / "dog" / "a.png")
        _png(root / "one" / "a.png")
    elif layout == "unknown_csv_label":
        _png(tmp_path / "a.png")
        root = tmp_path / "l.csv"
        root.write_text("a.png,seven\n")

    with pytest.raises(DataError, match=message):
        load_local_data(root, CLASSES)


def test_validation_split_is_seeded_and_disjoint():
    samples = [(Path(f"{i}.png"), i % 3) for i in range(50)]

    train, val = split_train_val(samples, 0.2, seed=7)

    assert len(val) == 10 and len(train) == 40
    assert not set(train) & set(val)
    assert split_train_val(samples, 0.2, seed=7) == (train, val)
