"""The service fills the base's image preprocessing into the spec it echoes to every client.

A checkpoint folder may exist on the service only (`base_source: server`): a client
that built its preprocessing from the folder would silently fall back to defaults.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.torch import load

from shared.api import FederationInfo
from shared.spec import parse_spec
from shared.tuning import build
from tests.aggregator_service.conftest import EXAMPLES
from tests.shared.tuning.checkpoints import IMAGENET, write_vit_checkpoint

STATED = {"size": 32, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "nearest"}


def _example(name: str, **model: Any) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    spec["model"] = {**spec["model"], **model}
    return spec


def _as_member(fed: Any) -> tuple[FederationInfo, dict[str, Any]]:
    """The federation and its base, as a member client downloads them."""
    with fed.as_client(next(iter(fed.keys))) as c:
        info = c.get(f"/v1/federations/{fed.id}")
        base = c.get(f"/v1/federations/{fed.id}/base")
    assert info.status_code == base.status_code == 200
    return FederationInfo.model_validate(info.json()), load(base.content)


def _image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_a_server_only_checkpoint_s_normalisation_reaches_every_client(
    tmp_path, start_app, new_federation
):
    folder = write_vit_checkpoint(tmp_path / "vit", processor=IMAGENET)
    posted = _example("tiny-vit-lora.yaml", pretrained=str(folder))
    service_model = build(parse_spec(posted))
    fed = new_federation(start_app(), posted, 1)
    info, base = _as_member(fed)
    folder.rename(tmp_path / "gone")  # the client machine cannot see the service's folder

    client_model = build(info.spec, base_state=base)

    image = _image()
    served, trained = service_model.transform(False)(image), client_model.transform(False)(image)
    assert served.equal(trained)
    stated = info.spec.model.preprocess
    assert stated is not None
    assert (stated.mean, stated.std) == (IMAGENET["image_mean"], IMAGENET["image_std"])


@pytest.mark.parametrize("example", ["tiny-clip-bias.yaml", "tiny-vit-lora.yaml"])
def test_the_echoed_spec_carries_the_preprocessing_the_service_built_with(
    example, start_module_app, new_federation
):
    posted = _example(example)
    fed = new_federation(start_module_app(), posted, 1)

    info, _ = _as_member(fed)

    assert info.spec.model.preprocess == build(parse_spec(posted)).preprocess
    rest: Any = {"model": {"preprocess"}}
    assert info.spec.model_dump(exclude=rest) == parse_spec(posted).model_dump(exclude=rest)


def test_a_stated_preprocess_is_kept_as_posted(tmp_path, start_app, new_federation):
    folder = write_vit_checkpoint(tmp_path / "vit", processor=IMAGENET)
    posted = _example("tiny-vit-lora.yaml", pretrained=str(folder), preprocess=STATED)
    fed = new_federation(start_app(), posted, 1)

    info, base = _as_member(fed)

    assert info.spec.model.preprocess is not None
    assert info.spec.model.preprocess.model_dump() == STATED
    assert list(build(info.spec, base_state=base).preprocess.mean) == STATED["mean"]


BAD_PREPROCESS = [
    ({**STATED, "size": 0}, r"^model\.preprocess\.size: Input should be greater than 0$"),
    ({**STATED, "mean": [0.5, 0.5]}, r"^model\.preprocess\.mean: List should have at least 3"),
    ({**STATED, "std": [0.5, 0.0, 0.5]}, r"^model\.preprocess\.std\.1: .*greater than 0$"),
    ({**STATED, "interpolation": "lanczos"}, r"^model\.preprocess\.interpolation: "),
    ({**STATED, "resize_mode": "squash"}, r"^model\.preprocess\.resize_mode: Extra inputs"),
    (
        {**STATED, "size": 224},
        r"^cannot build the model: model\.preprocess\.size: the model takes 32-pixel images, "
        r"not 224$",
    ),
]


@pytest.mark.parametrize(("preprocess", "detail"), BAD_PREPROCESS)
def test_a_bad_preprocess_is_refused_and_creates_nothing(preprocess, detail, start_module_app):
    app = start_module_app()
    posted = _example("tiny-vit-lora.yaml", preprocess=preprocess)
    with app.client() as c:
        before = c.get("/v1/federations").json()
        r = c.post("/v1/federations", json=posted)
        after = c.get("/v1/federations").json()

    assert r.status_code == 422 and r.json()["error"] == "invalid_spec"
    assert re.match(detail, r.json()["detail"]) and "\n" not in r.json()["detail"]
    assert after == before
