"""Pre-training data for the self-made bases: font glyphs rendered and degraded on the fly.

The images are characters and simple shapes rendered from the DejaVu fonts
(digits 0-9, letters a-z and A-Z, eight geometric shapes), each drawn once
into a high-resolution bank and then heavily augmented per sample on the
tensor side: stroke thickening or thinning, rotation, scale, aspect, shear and
translation, low-resolution degradation (area-downsampled to 6-16 px, some
quantised to 17 grey levels, then bilinear-upsampled to the model's size),
blur, random grey or coloured foreground and background in either polarity,
and pixel noise. Captions pair each image with its concept in one of several
templates ("a photo of the digit seven.", "the number 7.", "a photo of the
capital letter k.", "a drawing of a star.").

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
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from lab.bases.augment import Augment, augment, stroke_level, stroke_variants

__all__ = [
    "CLASSES",
    "GENERATOR",
    "GlyphBatch",
    "GlyphConfig",
    "GlyphData",
    "caption_texts",
    "find_font",
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
        "a photo of the digit {name}.",
        "a photo of the number {name}.",
        "the digit {name}.",
        "a blurry photo of the digit {name}.",
        "a low resolution photo of the digit {name}.",
        "a photo of the digit {char}.",
        "the number {char}.",
        "a drawing of the number {name}.",
    ],
    "lower": [
        "a photo of the letter {name}.",
        "the letter {name}.",
        "a blurry photo of the letter {name}.",
        "a low resolution photo of the letter {name}.",
        "a photo of the lowercase letter {name}.",
        "the small letter {name}.",
        "a photo of the character {name}.",
        "a drawing of the letter {name}.",
    ],
    "upper": [
        "a photo of the letter {name}.",
        "the letter {name}.",
        "a blurry photo of the letter {name}.",
        "a low resolution photo of the letter {name}.",
        "a photo of the capital letter {name}.",
        "the capital letter {name}.",
        "a photo of the character {name}.",
        "a drawing of the capital letter {name}.",
    ],
    "shape": [
        "a photo of a {name}.",
        "a {name}.",
        "a blurry photo of a {name}.",
        "a low resolution photo of a {name}.",
        "a drawing of a {name}.",
        "a {name} shape.",
        "a photo of the shape {name}.",
        "a simple {name}.",
    ],
}

# Where the DejaVu fonts are looked for: $FEDTUNE_FONT_DIR, the system's, matplotlib's copy.
_FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/TTF")]


def caption_texts() -> list[list[str]]:
    """Every caption, [class][template]: the same number of templates for every class."""
    out = []
    for kind, name, char in CLASSES:
        out.append([t.format(name=name, char=char) for t in _TEMPLATES[kind]])
    return out


def find_font(name: str) -> Path:
    """The file of one DejaVu font; a one-line error names where it was looked for."""
    dirs = list(_FONT_DIRS)
    if os.environ.get("FEDTUNE_FONT_DIR"):
        dirs.insert(0, Path(os.environ["FEDTUNE_FONT_DIR"]))
    try:
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        pass
    for d in dirs:
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(
        f"font {name} not found in {', '.join(map(str, dirs))} "
        "(install fonts-dejavu-core or set FEDTUNE_FONT_DIR)"
    )


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
        templates = torch.randint(0, self.num_templates, (n,), generator=generator)
        return GlyphBatch(images, labels, templates)


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
            variants = [_draw_shape(name, config.canvas, style) for style in range(len(fonts))]
        else:
            variants = [_draw_char(char, path, config.canvas) for path in fonts]
        masks += variants
        labels += [label] * len(variants)
    return torch.stack(masks), torch.tensor(labels)


def _fit(img: Image.Image, canvas: int) -> torch.Tensor:
    """Crop to the ink, scale the longer side to 80 % of the canvas, centre it."""
    box = img.getbbox()
    if box is None:
        raise ValueError("a glyph rendered empty")
    img = img.crop(box)
    side = 0.8 * canvas
    scale = side / max(img.size)
    w, h = max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    out = Image.new("L", (canvas, canvas), 0)
    out.paste(img, ((canvas - w) // 2, (canvas - h) // 2))
    return torch.frombuffer(bytearray(out.tobytes()), dtype=torch.uint8).view(canvas, canvas)


def _draw_char(char: str, font_path: Path, canvas: int) -> torch.Tensor:
    size = canvas * 3
    font = ImageFont.truetype(str(font_path), size=size)
    img = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(img).text((size // 2, size // 2), char, fill=255, font=font)
    return _fit(img, canvas)


def _draw_shape(name: str, canvas: int, style: int) -> torch.Tensor:
    """A shape, filled or outlined with one of several stroke widths (by `style`)."""
    size = canvas * 3
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    filled = style % 3 == 0
    width = (8, 14, 22, 30)[style % 4]
    fill, outline = (255, None) if filled else (None, 255)
    c, r = size / 2, size * 0.4
    stretch = 1.0 + 0.1 * (style % 5)  # slightly different aspect ratios per style
    if name in ("circle", "square"):
        box = [c - r * stretch, c - r, c + r * stretch, c + r]
        drawer = draw.ellipse if name == "circle" else draw.rectangle
        drawer(box, fill=fill, outline=outline, width=width)
    elif name == "plus sign":
        t = width * 1.5
        draw.rectangle([c - r, c - t, c + r, c + t], fill=255)
        draw.rectangle([c - t, c - r, c + t, c + r], fill=255)
    else:
        points = _polygon(name, c, r, stretch)
        draw.polygon(points, fill=fill, outline=outline, width=width)
    return _fit(img, canvas)


def _polygon(name: str, c: float, r: float, stretch: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: list[float], turn: float) -> list[tuple[float, float]]:
        out = []
        for i in range(n):
            a, rad = turn + 2 * math.pi * i / n, radius[i % len(radius)]
            out.append((c + rad * stretch * math.cos(a), c + rad * math.sin(a)))
        return out

    if name == "triangle":
        return ring(3, [r], -math.pi / 2)
    if name == "diamond":
        return ring(4, [r], -math.pi / 2)
    if name == "hexagon":
        return ring(6, [r], 0.0)
    if name == "star":
        return ring(10, [r, r * 0.42], -math.pi / 2)
    if name == "arrow":
        s, t = r * stretch, r * 0.25
        return [(c - s, c - t), (c + 0.1 * s, c - t), (c + 0.1 * s, c - r * 0.7), (c + s, c),
                (c + 0.1 * s, c + r * 0.7), (c + 0.1 * s, c + t), (c - s, c + t)]  # fmt: skip
    raise ValueError(f"unknown shape {name!r}")


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
