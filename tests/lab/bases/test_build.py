"""Building self-made bases: deterministic bytes, provenance, the cache, loading through specs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lab.bases import build_base_to, ensure_base, ensure_built
from shared.models.synthetic import PROVENANCE_FILE, SyntheticBase, find_base
from shared.spec import FederationSpec, parse_spec
from shared.tuning import build
from tests.lab.bases.tiny import ARCHS, TAG, tiny_base

FAMILIES = ["open_clip", "hf_vit"]
WEIGHTS = {"open_clip": "open_clip_model.safetensors", "hf_vit": "model.safetensors"}


def _spec(family: str, pretrained: str | None) -> FederationSpec:
    return parse_spec(
        {
            "name": "bases-test",
            "model": {"family": family, "arch": ARCHS[family], "pretrained": pretrained},
            "task": {
                "classes": ["zero", "one", "two"],
                "prompt_template": "a photo of the digit {}.",
            },
            "method": {"name": "bias"},
        }
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_same_recipe_builds_identical_weights_with_full_provenance(
    family: str, tmp_path: Path
) -> None:
    base = tiny_base(family)

    first = build_base_to(base, tmp_path / "a", log=None)
    second = build_base_to(base, tmp_path / "b", log=None)

    assert first["sha256"] == second["sha256"]
    assert WEIGHTS[family] in first["sha256"]
    for field in ("name", "family", "arch", "tag", "key", "recipe", "data", "steps", "seed"):
        assert field in first
    assert first["key"] == base.key and first["threads"] == 1 and first["wall_seconds"] > 0
    assert set(first["versions"]) >= {"torch", "open_clip", "transformers"}
    assert "disjoint_from_evaluation" in first["data"] and first["data"]["fonts"]
    assert any(isinstance(v, float) for v in first["held_out"].values())
    assert (tmp_path / "a" / PROVENANCE_FILE).is_file()


def test_another_seed_builds_different_weights(tmp_path: Path) -> None:
    first = build_base_to(tiny_base("hf_vit", seed=0), tmp_path / "a", log=None)
    second = build_base_to(tiny_base("hf_vit", seed=1), tmp_path / "b", log=None)

    assert first["sha256"]["model.safetensors"] != second["sha256"]["model.safetensors"]


def test_ensure_built_builds_once_then_answers_from_the_cache(tmp_path: Path) -> None:
    base = tiny_base("open_clip")
    messages: list[str] = []

    path = ensure_built(base, root=tmp_path, log=messages.append)
    stamp = (path.stat().st_mtime_ns, path.stat().st_ino)
    built_messages = len(messages)
    again = ensure_built(base, root=tmp_path, log=messages.append)

    assert again == path == base.weights_path(tmp_path)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp
    assert built_messages > 0 and len(messages) == built_messages
    assert base.is_built(tmp_path)
    assert sorted(p.name for p in base.directory(tmp_path).parent.iterdir()) == [
        base.directory(tmp_path).name,
        f"{base.directory(tmp_path).name}.lock",
    ]


def test_concurrent_callers_build_a_base_once(tmp_path: Path) -> None:
    base = tiny_base("hf_vit")
    messages: list[str] = []
    results: list[Path] = []

    def call() -> None:
        results.append(ensure_built(base, root=tmp_path, log=messages.append))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert results == [base.weights_path(tmp_path)] * 2
    assert sum(m.startswith("building ") for m in messages) == 1


def test_ensure_base_names_the_known_bases_for_an_unknown_one() -> None:
    with pytest.raises(ValueError, match=r"known: .*fedtune-synth-clip:fedtune-synth-v1"):
        ensure_base("fedtune-synth-clip", "no-such-tag", log=None)


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_naming_an_unbuilt_base_is_a_one_line_error(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDTUNE_CACHE_DIR", str(tmp_path))

    with pytest.raises(ValueError) as info:
        build(_spec(family, TAG))

    message = str(info.value)
    assert "\n" not in message and "not built" in message
    assert f"fedtune-study build-base --arch {ARCHS[family]} --tag {TAG}" in message


@pytest.mark.parametrize("family", FAMILIES)
def test_a_built_base_loads_through_the_spec_and_differs_from_random_init(
    family: str, tmp_path: Path
) -> None:
    base = tiny_base(family)
    path = ensure_built(base, root=tmp_path, log=None)

    pretrained = build(_spec(family, str(path)))
    random = build(_spec(family, None))

    assert pretrained.base_fingerprint() != random.base_fingerprint()
    assert pretrained.manifest() == random.manifest()


def test_registered_tag_resolves_to_the_cached_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDTUNE_CACHE_DIR", str(tmp_path))
    registered = find_base(ARCHS["hf_vit"], TAG)
    assert isinstance(registered, SyntheticBase)
    # build the tiny recipe where the registered base would live
    tiny = tiny_base("hf_vit")
    build_base_to(tiny, registered.directory(), log=None)

    by_tag = build(_spec("hf_vit", TAG))
    by_path = build(_spec("hf_vit", str(registered.weights_path())))

    assert by_tag.base_fingerprint() == by_path.base_fingerprint()


def test_a_killed_builds_leftovers_are_cleared_and_the_base_still_builds(tmp_path: Path) -> None:
    base = tiny_base("hf_vit")
    final = base.directory(tmp_path)
    leftover = final.with_name(f"{final.name}.tmp-killed")
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half written")
    final.mkdir()  # a directory without provenance.json is not a base

    path = ensure_built(base, root=tmp_path, log=None)

    assert not leftover.exists()
    assert base.is_built(tmp_path) and (path / "model.safetensors").stat().st_size > 1000
