"""Parameter counts on the full-size shapes, offline (meta device, pretrained null)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.spec import FederationSpec, load_spec
from shared.tuning import MethodReport, format_method_table, method_reports
from tests.shared.tuning.specs import tiny_spec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _offline(path: str) -> FederationSpec:
    spec = load_spec(EXAMPLES / path)
    return spec.model_copy(update={"model": spec.model.model_copy(update={"pretrained": None})})


@pytest.fixture(scope="module")
def vit_b16() -> dict[str, MethodReport]:
    return {
        r.method: r for r in method_reports(_offline("vit-b16-in21k-lora.yaml")) if not r.variant
    }


@pytest.fixture(scope="module")
def clip_b32() -> dict[str, MethodReport]:
    return {
        r.method: r for r in method_reports(_offline("clip-vit-b32-bias.yaml")) if not r.variant
    }


def test_vit_b16_bitfit_trains_102912_backbone_biases(vit_b16: dict[str, MethodReport]) -> None:
    bias = vit_b16["bias"]
    assert bias.trainable_params == 102_912
    assert bias.fraction == pytest.approx(0.0012, abs=0.00005)


def test_vit_b16_lora_r8_on_query_and_value_trains_294912(vit_b16: dict[str, MethodReport]) -> None:
    assert vit_b16["lora"].trainable_params == 294_912


def test_vit_b16_new_head_is_counted_apart_but_travels(vit_b16: dict[str, MethodReport]) -> None:
    head = 768 * 10 + 10
    for name in ("bias", "lora", "adapter", "vpt"):
        report = vit_b16[name]
        assert report.head_params == head
        assert report.bytes_per_update == (report.trainable_params + head) * 4
    assert vit_b16["head"].trainable_params == head and vit_b16["head"].head_params == 0
    assert vit_b16["full"].trainable_params == vit_b16["full"].total_params


def test_vit_b16_reports_every_vision_method_but_not_text_prompt(
    vit_b16: dict[str, MethodReport],
) -> None:
    assert list(vit_b16) == ["full", "head", "bias", "lora", "adapter", "vpt"]


def test_clip_vit_b32_reports_every_method_offline(clip_b32: dict[str, MethodReport]) -> None:
    assert list(clip_b32) == ["full", "head", "bias", "lora", "adapter", "vpt", "text_prompt"]
    assert clip_b32["bias"].trainable_params == 102_912
    assert clip_b32["lora"].trainable_params == 12 * 2 * 2 * 8 * 768
    assert clip_b32["head"].trainable_params == 10 * 512
    assert clip_b32["text_prompt"].trainable_params == 16 * 512


def test_transport_dtype_sets_bytes_per_update() -> None:
    spec = tiny_spec("hf_vit", "bias")
    half = spec.model_copy(
        update={"transport": spec.transport.model_copy(update={"dtype": "float16"})}
    )
    full_reports, half_reports = method_reports(spec), method_reports(half)
    for f32, f16 in zip(full_reports, half_reports, strict=True):
        assert f32.bytes_per_update == 2 * f16.bytes_per_update


def test_table_has_a_header_and_one_aligned_row_per_method() -> None:
    reports = method_reports(tiny_spec("open_clip", "bias"))
    lines = format_method_table(reports).splitlines()
    assert lines[0].split()[:2] == ["method", "trainable"]
    assert [line.split()[0] for line in lines[1:]] == [r.method for r in reports]
    assert len({len(line) for line in lines}) == 1
