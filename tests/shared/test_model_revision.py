"""`model.revision` pins hub weights: checked in the spec, passed to every hub download."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
import transformers.utils.hub
from huggingface_hub.errors import LocalEntryNotFoundError

from shared.models import build_family
from shared.spec import FederationSpec, SpecError, parse_spec

REV = "0123456789abcdef0123456789abcdef01234567"
CLIP_HUB_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
VIT_HUB_ID = "google/vit-base-patch16-224-in21k"


def _spec(**model: Any) -> dict[str, Any]:
    family = model.get("family", "open_clip")
    return {
        "name": "pinned",
        "model": {"family": family, **model},
        "task": {"classes": ["cat", "dog"]},
        "method": {"name": "bias" if family == "open_clip" else "lora"},
    }


def _clip(**model: Any) -> dict[str, Any]:
    return _spec(
        **{"family": "open_clip", "arch": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", **model}
    )


def _vit(**model: Any) -> dict[str, Any]:
    return _spec(**{"family": "hf_vit", "arch": VIT_HUB_ID, "pretrained": VIT_HUB_ID, **model})


class HubDownloads:
    """Stands in for the hub's download function: records each call, then fails offline."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, repo_id: str, filename: str, **kwargs: Any) -> str:
        self.calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        raise LocalEntryNotFoundError("the hub is not reachable from this test")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> HubDownloads:
    fake = HubDownloads()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", fake)
    return fake


def _build(spec: FederationSpec) -> None:
    build_family(spec, load_weights=True, device=torch.device("cpu"))


# --- the spec ---------------------------------------------------------------------------


def test_full_commit_id_is_accepted() -> None:
    assert parse_spec(_clip(revision=REV)).model.revision == REV


def test_spec_without_revision_still_parses() -> None:
    assert parse_spec(_clip()).model.revision is None


@pytest.mark.parametrize(
    "revision",
    ["main", "v1.0", REV[:7], REV.upper(), REV + "0", REV[:-1] + "g"],
    ids=["branch", "tag", "short", "uppercase", "too-long", "not-hex"],
)
def test_revision_that_is_not_a_full_commit_id_is_refused(revision: str) -> None:
    with pytest.raises(SpecError, match=r"model\.revision: .*40 lowercase hex"):
        parse_spec(_clip(revision=revision))


@pytest.mark.parametrize(
    "pretrained",
    ["./weights/clip.safetensors", "checkpoints/clip.pt", "~/clip.bin"],
)
def test_revision_with_local_weights_is_refused(pretrained: str) -> None:
    with pytest.raises(SpecError, match=r"model: .*local file or directory"):
        parse_spec(_clip(pretrained=pretrained, revision=REV))


def test_revision_with_an_existing_local_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"model: .*local file or directory"):
        parse_spec(_vit(pretrained=str(tmp_path), revision=REV))


def test_revision_with_a_self_made_base_is_refused() -> None:
    spec = _clip(arch="fedtune-synth-clip", pretrained="fedtune-synth-v1", revision=REV)
    with pytest.raises(SpecError, match=r"model: .*self-made base"):
        parse_spec(spec)


def test_revision_with_random_init_clip_is_refused() -> None:
    with pytest.raises(SpecError, match=r"model: .*pretrained is null"):
        parse_spec(_clip(pretrained=None, revision=REV))


def test_revision_with_open_clip_hf_hub_arch_is_refused() -> None:
    spec = _clip(arch=f"hf-hub:{CLIP_HUB_REPO}", pretrained=None, revision=REV)
    with pytest.raises(SpecError, match=r"model: .*'hf-hub:'"):
        parse_spec(spec)


# --- the downloads ------------------------------------------------------------------------


def test_open_clip_tag_is_downloaded_at_the_revision(hub: HubDownloads) -> None:
    spec = parse_spec(_clip(revision=REV))

    with pytest.raises(ValueError, match=rf"model\.revision: cannot download .* at revision {REV}"):
        _build(spec)

    assert hub.calls[0]["repo_id"] == CLIP_HUB_REPO
    assert hub.calls[0]["filename"] == "open_clip_model.safetensors"
    assert {call["revision"] for call in hub.calls} == {REV}


def test_hf_vit_weights_are_downloaded_at_the_revision(hub: HubDownloads) -> None:
    spec = parse_spec(_vit(revision=REV))

    with pytest.raises(ValueError, match=rf"model\.pretrained: cannot load .* at revision {REV}"):
        _build(spec)

    assert hub.calls, "transformers never reached the hub download"
    assert {call["repo_id"] for call in hub.calls} == {VIT_HUB_ID}
    assert {call["revision"] for call in hub.calls} == {REV}


def test_hf_vit_hub_config_is_downloaded_at_the_revision(hub: HubDownloads) -> None:
    spec = parse_spec(_vit(arch="org/vit-unknown", pretrained="org/vit-unknown", revision=REV))

    with pytest.raises(ValueError, match=rf"model\.arch: .* at revision {REV}"):
        _build(spec)

    assert hub.calls[0]["filename"] == "config.json"
    assert {call["revision"] for call in hub.calls} == {REV}


def test_hf_vit_revision_over_two_repositories_is_refused(hub: HubDownloads) -> None:
    spec = parse_spec(_vit(arch="org/vit-config", pretrained="org/vit-weights", revision=REV))

    with pytest.raises(ValueError, match=r"model\.revision: .* name two"):
        _build(spec)

    assert hub.calls == []


def test_unpinned_hub_weights_log_a_warning_naming_the_field(
    hub: HubDownloads, caplog: pytest.LogCaptureFixture
) -> None:
    spec = parse_spec(_vit(arch="org/unpinned-vit", pretrained="org/unpinned-vit"))

    with caplog.at_level(logging.WARNING), pytest.raises(ValueError):
        _build(spec)

    assert any("model.revision" in r.getMessage() for r in caplog.records)
    assert all(call.get("revision") in (None, "main") for call in hub.calls)


def test_pinned_open_clip_tag_loads_the_file_downloaded_at_the_revision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import open_clip
    from safetensors.torch import save_file

    reference = open_clip.create_model("fedtune-tiny-clip")
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    calls: list[dict[str, Any]] = []

    def download(repo_id: str, filename: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        return str(weights)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    tags = {"pinned_test": {"hf_hub": "org/tiny-clip/", "mean": (0.1, 0.2, 0.3)}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "fedtune-tiny-clip", tags)
    spec = parse_spec(_clip(arch="fedtune-tiny-clip", pretrained="pinned-test", revision=REV))

    model: Any = build_family(spec, load_weights=True, device=torch.device("cpu"))

    assert calls == [
        {
            "repo_id": "org/tiny-clip",
            "filename": "open_clip_model.safetensors",
            "revision": REV,
            "library_name": "open_clip",
            "library_version": open_clip.__version__,
        }
    ]
    assert torch.equal(model.visual.conv1.weight, reference.visual.conv1.weight)
    assert model.preprocess.mean == [0.1, 0.2, 0.3]
