"""`transform(train)` gives the family's size and normalisation for any PIL image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shared.tuning import build
from tests.shared.tuning.specs import tiny_spec


@pytest.mark.parametrize("family", ["open_clip", "hf_vit"])
@pytest.mark.parametrize("train", [False, True])
def test_transform_gives_normalised_square_tensor(family: str, train: bool) -> None:
    bm = build(tiny_spec(family, "head"))
    grey = Image.fromarray(np.full((40, 50), 255, dtype=np.uint8), mode="L")

    x = bm.transform(train)(grey)

    assert x.shape == (3, bm.image_size, bm.image_size) == (3, 32, 32)
    mean, std = bm.preprocess.mean, bm.preprocess.std
    expected = torch.tensor([(1 - m) / s for m, s in zip(mean, std, strict=True)])
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-4)
    with torch.no_grad():
        assert bm.model(x.unsqueeze(0)).shape == (1, 10)
