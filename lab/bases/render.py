"""Drawing the glyph bank: characters from font files and simple geometric shapes.

Each mask is drawn large, cropped to its ink, scaled so that its longer side
fills 80 % of a square canvas and centred there (uint8, ink = 255). The
augmentation then places, degrades and colours it per sample.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_char", "draw_shape", "find_font"]

# Where the DejaVu fonts are looked for: $FEDTUNE_FONT_DIR, the system's, matplotlib's copy.
_FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/TTF")]


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


def draw_char(char: str, font_path: Path, canvas: int) -> torch.Tensor:
    size = canvas * 3
    font = ImageFont.truetype(str(font_path), size=size)
    img = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(img).text((size // 2, size // 2), char, fill=255, font=font)
    return _fit(img, canvas)


def draw_shape(name: str, canvas: int, style: int) -> torch.Tensor:
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
