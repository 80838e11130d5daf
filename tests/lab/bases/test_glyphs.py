"""The pre-training data: seeded glyph images with their classes and captions."""

from __future__ import annotations

import torch

from lab.bases.glyphs import CLASSES, GlyphConfig, GlyphData, caption_texts
from tests.lab.bases.tiny import tiny_base


def _data() -> GlyphData:
    return GlyphData(GlyphConfig.from_recipe(tiny_base("open_clip").recipe["data"]))


def test_same_seed_gives_the_same_batch_and_another_seed_a_different_one() -> None:
    data = _data()

    a = data.sample(24, torch.Generator().manual_seed(7))
    b = data.sample(24, torch.Generator().manual_seed(7))
    c = data.sample(24, torch.Generator().manual_seed(8))

    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.templates, b.templates)
    assert not torch.equal(a.images, c.images)


def test_sampling_leaves_the_global_rng_alone() -> None:
    data = _data()
    torch.manual_seed(0)
    expected = torch.rand(3)

    torch.manual_seed(0)
    data.sample(8, torch.Generator().manual_seed(1))

    assert torch.equal(torch.rand(3), expected)


def test_batches_are_rgb_images_at_the_model_size_with_valid_labels() -> None:
    batch = _data().sample(64, torch.Generator().manual_seed(0))

    assert batch.images.shape == (64, 3, 32, 32)
    assert batch.images.dtype == torch.float32
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0
    assert batch.labels.min() >= 0 and batch.labels.max() < len(CLASSES)
    assert batch.templates.min() >= 0 and batch.templates.max() < len(caption_texts()[0])


def test_classes_are_digits_letters_and_shapes_with_captions_for_each() -> None:
    captions = caption_texts()
    kinds = [kind for kind, _, _ in CLASSES]

    assert len(captions) == len(CLASSES)
    assert len({len(row) for row in captions}) == 1
    assert kinds.count("digit") == 10 and kinds.count("lower") == kinds.count("upper") == 26
    assert "a photo of the digit seven." in captions[7]
    assert "a photo of the capital letter k." in captions[kinds.index("upper") + 10]
    for (_, name, char), row in zip(CLASSES, captions, strict=True):
        assert all(name in caption or char in caption for caption in row)
