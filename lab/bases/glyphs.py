"""Pre-training data for the self-made bases: font glyphs rendered and degraded on the fly.

The images are characters and simple shapes rendered from the DejaVu fonts
(digits 0-9, letters a-z and A-Z, eight geometric shapes), each drawn once
into a high-resolution bank and then heavily augmented per sample on the
tensor side: stroke thickening or thinning, rotation, scale, aspect, shear and
translation, low-resolution degradation (area-downsampled to 6-16 px, some
quantised to 17 grey levels, then bilinear-upsampled to the model's size),
blur, random grey or coloured foreground and background in either polarity,
and pixel noise. Captions pair each image with its concept in one of eight
core phrases per kind ("a photo of the digit seven", "the number 7", "a photo
of the capital letter k", "a drawing of a star"), with an optional lead-in
("this is ...") and tail ("..., centred in a small square image"), so that
caption words occur at every position of the text context.

What overlaps with FedTune's evaluation tasks, and what does not: the
*concepts* of scikit-learn's handwritten digits (the shapes 0-9 and their
English names, and the prompt template "a photo of the digit {}.") appear
here, as web-scale pre-training overlaps ImageNet's classes. The *source*
and every *sample* are disjoint: these are typeset font glyphs synthesised
from a seed, never handwriting, and no image of the digits data set (or of
any user data) is read. Every random draw comes from a `torch.Generator`
seeded by the caller; the module never touches global RNG state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from lab.bases.augment import Augment, augment, stroke_level, stroke_variants
from lab.bases.render import draw_char, draw_shape, find_font

__all__ = [
    "CLASSES",
    "GENERATOR",
    "GlyphBatch",
    "GlyphConfig",
    "GlyphData",
    "caption_texts",
    "data_description",
]

GENERATOR = "fedtune-glyphs/1"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SHAPES = ["circle", "square", "triangle", "diamond", "star", "plus sign", "arrow", "hexagon"]

DEFAULT_MIX = {"digit": 0.4, "lower": 0.2, "upper": 0.2, "shape": 0.2}

# (kind, caption name, what is drawn): digits, lower- and upper-case letters, shapes.
CLASSES: list[tuple[str, str, str]] = (
    [("digit", name, str(i)) for i, name in enumerate(DIGIT_NAMES)]
    + [("lower", c, c) for c in LETTERS]
    + [("upper", c, c.upper()) for c in LETTERS]
    + [("shape", s, s) for s in SHAPES]
)

_TEMPLATES = {
    "digit": [
        "a photo of the digit {name}",
        "a photo of the number {name}",
        "the digit {name}",
        "a blurry photo of the digit {name}",
        "a low resolution photo of the digit {name}",
        "a photo of the digit {char}",
        "the number {char}",
        "a drawing of the number {name}",
    ],
    "lower": [
        "a photo of the letter {name}",
        "the letter {name}",
        "a blurry photo of the letter {name}",
        "a low resolution photo of the letter {name}",
        "a photo of the lowercase letter {name}",
        "the small letter {name}",
        "a photo of the character {name}",
        "a drawing of the letter {name}",
    ],
    "upper": [
        "a photo of the letter {name}",
        "the letter {name}",
        "a blurry photo of the letter {name}",
        "a low resolution photo of the letter {name}",
        "a photo of the capital letter {name}",
        "the capital letter {name}",
        "a photo of the character {name}",
        "a drawing of the capital letter {name}",
    ],
    "shape": [
        "a photo of a {name}",
        "a {name}",
        "a blurry photo of a {name}",
        "a low resolution photo of a {name}",
        "a drawing of a {name}",
        "a {name} shape",
        "a photo of the shape {name}",
        "a simple {name}",
    ],
}

# Lead-ins and tails are drawn with these weights: the plain core most often.
_LEADS = ["", "this is ", "here is ", "a small square picture: "]
_LEAD_WEIGHTS = [0.55, 0.15, 0.15, 0.15]
_TAILS = [
    "",
    " on a plain background",
    ", centred in a small square image",
    ", printed in some typeface and captured at a low resolution with noise",
]
_TAIL_WEIGHTS = [0.55, 0.15, 0.15, 0.15]


def caption_texts() -> list[list[str]]:
    """Every caption, [class][template]: the same templates count for every class.

    A template is a core phrase with an optional lead-in and tail, so that the
    words of a caption appear at every position of the text context (CoOp's
    learned context vectors push the class prompt 16 positions to the right).
    Template 0 is the plain core, e.g. "a photo of the digit seven.".
    """
    out = []
    for kind, name, char in CLASSES:
        row = []
        for core in _TEMPLATES[kind]:
            phrase = core.format(name=name, char=char)
            row += [f"{lead}{phrase}{tail}." for lead in _LEADS for tail in _TAILS]
        out.append(row)
    return out


@dataclass(frozen=True)
class GlyphConfig:
    """The generator's settings: the `data` section of a base's recipe."""

    fonts: tuple[str, ...]
    image_size: int = 32
    canvas: int = 64  # side of the high-resolution glyph bank
    # share of samples per kind; the rest are split evenly inside each kind
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    augment: Augment = field(default_factory=Augment)

    @classmethod
    def from_recipe(cls, data: dict[str, Any]) -> GlyphConfig:
        known = {"generator", "fonts", "image_size", "canvas", "mix", "augment"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"recipe data: unknown setting {unknown[0]!r}")
        if data.get("generator", GENERATOR) != GENERATOR:
            raise ValueError(f"recipe data: generator {data['generator']!r} is not {GENERATOR}")
        return cls(
            fonts=tuple(data["fonts"]),
            image_size=int(data.get("image_size", 32)),
            canvas=int(data.get("canvas", 64)),
            mix=dict(data.get("mix", DEFAULT_MIX)),
            augment=Augment(**data.get("augment", {})),
        )


@dataclass
class GlyphBatch:
    """Images [B, 3, S, S] in [0, 1], class labels [B] and template indices [B]."""

    images: torch.Tensor
    labels: torch.Tensor
    templates: torch.Tensor


class GlyphData:
    """The glyph bank of a config, and seeded batches drawn from it."""

    def __init__(self, config: GlyphConfig) -> None:
        self.config = config
        masks, labels = _render_bank(config)
        self.masks = stroke_variants(masks, config.augment)  # uint8 [levels, N, canvas, canvas]
        self.bank_labels = labels  # [N]
        counts = torch.bincount(labels, minlength=len(CLASSES))
        self.offsets = torch.cumsum(counts, 0) - counts
        self.counts = counts
        self.class_weights = _class_weights(config.mix)
        self.num_templates = len(caption_texts()[0])

    @cached_property
    def fonts_used(self) -> list[dict[str, str]]:
        """Name, file and sha256 of every font, for the provenance."""
        out = []
        for name in self.config.fonts:
            path = find_font(name)
            out.append(
                {
                    "name": name,
                    "file": str(path),
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                }
            )
        return out

    def sample(self, n: int, generator: torch.Generator) -> GlyphBatch:
        """`n` augmented images with their labels and caption template indices."""
        labels = torch.multinomial(self.class_weights, n, replacement=True, generator=generator)
        pick = torch.rand(n, generator=generator)
        index = self.offsets[labels] + (pick * self.counts[labels]).long()
        level = stroke_level(n, self.config.augment, generator)
        masks = self.masks[level, index].float().div_(255.0).unsqueeze(1)
        images = augment(masks, self.config.image_size, self.config.augment, generator)
        templates = _draw_templates(n, generator)
        return GlyphBatch(images, labels, templates)


def _draw_templates(n: int, generator: torch.Generator) -> torch.Tensor:
    """Template indices as `caption_texts` orders them: core, then lead-in, then tail."""
    core = torch.randint(0, len(_TEMPLATES["digit"]), (n,), generator=generator)
    lead = torch.multinomial(torch.tensor(_LEAD_WEIGHTS), n, replacement=True, generator=generator)
    tail = torch.multinomial(torch.tensor(_TAIL_WEIGHTS), n, replacement=True, generator=generator)
    return (core * len(_LEADS) + lead) * len(_TAILS) + tail


def _class_weights(mix: dict[str, float]) -> torch.Tensor:
    kinds = [kind for kind, _, _ in CLASSES]
    if set(mix) - set(kinds):
        raise ValueError(f"recipe data.mix: unknown kind {sorted(set(mix) - set(kinds))[0]!r}")
    w = torch.tensor([mix.get(k, 0.0) / kinds.count(k) for k in kinds], dtype=torch.float64)
    return (w / w.sum()).float()


def _render_bank(config: GlyphConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (class, font) glyph, and every shape in a few styles, centred in the canvas."""
    masks, labels = [], []
    fonts = [find_font(name) for name in config.fonts]
    for label, (kind, name, char) in enumerate(CLASSES):
        if kind == "shape":
            variants = [draw_shape(name, config.canvas, style) for style in range(len(fonts))]
        else:
            variants = [draw_char(char, path, config.canvas) for path in fonts]
        masks += variants
        labels += [label] * len(variants)
    return torch.stack(masks), torch.tensor(labels)


def data_description(data: GlyphData) -> dict[str, Any]:
    """What the pre-training data is, and what it shares with evaluation tasks (provenance)."""
    kinds = sorted({kind for kind, _, _ in CLASSES})
    return {
        "generator": GENERATOR,
        "source": "glyphs rendered from DejaVu fonts and drawn shapes, synthesised from the seed",
        "fonts": data.fonts_used,
        "classes": {k: [n for kind, n, _ in CLASSES if kind == k] for k in kinds},
        "mix": data.config.mix,
        "caption_templates_per_class": data.num_templates,
        "example_captions": [row[0] for row in caption_texts()[:: len(CLASSES) // 6]],
        "augment": {
            k: v if isinstance(v, float | int) else list(v)
            for k, v in vars(data.config.augment).items()
        },
        "overlap_with_evaluation": (
            "concepts only: the digits 0-9, their English names and the prompt template "
            "'a photo of the digit {}.' also name scikit-learn's digits classes"
        ),
        "disjoint_from_evaluation": (
            "source and every sample: typeset font glyphs, never handwriting; no image of "
            "scikit-learn's digits or of any user data set is read"
        ),
    }
