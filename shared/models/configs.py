"""FedTune's model config registry: architectures as data in `shared/model_configs/`.

open_clip configs (files with `embed_dim`, `vision_cfg`, `text_cfg`) are
handed to open_clip's own registry with `open_clip.add_model_config`, so
`create_model("fedtune-tiny-clip")` works like any built-in name. transformers
ViT configs (`model_type: vit`) are looked up by name, with `/` in HF ids
spelled `--` in file names; they let a known HF id be built offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"

__all__ = ["CONFIG_DIR", "hf_vit_config", "register_open_clip_configs"]

_registered = False


def register_open_clip_configs() -> None:
    """Add FedTune's open_clip JSON configs to open_clip's registry (once)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered = True


def hf_vit_config(name: str) -> dict[str, Any] | None:
    """The shipped ViTConfig values for a tiny config name or known HF id, else None."""
    path = CONFIG_DIR / (name.replace("/", "--").replace("\\", "--") + ".json")
    if path.parent != CONFIG_DIR or not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if data.get("model_type") == "vit" else None
