"""The builder of FedTune's self-made pre-trained bases (see `shared.models.synthetic`).

Where no model hub is reachable, FedTune pre-trains small bases itself,
offline and deterministically, on images it renders from fonts (see
`lab.bases.glyphs` for what that data shares with evaluation tasks and what
it does not): a tiny open_clip CLIP trained contrastively on glyph images and
captions, and a tiny transformers ViT trained to classify glyphs.
"""

from lab.bases.build import build_base_to, ensure_base, ensure_built, rebuild

__all__ = ["build_base_to", "ensure_base", "ensure_built", "rebuild"]
