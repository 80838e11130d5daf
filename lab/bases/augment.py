"""Heavy, batched augmentation of glyph masks into training images (all seeded).

The order imitates how a small scanned or photographed character comes about:
a stroke of some weight, placed with some rotation, scale and slant, captured
at low resolution (area-averaged, sometimes quantised to 17 grey levels as
scanners and the 8x8 digits data sets do), upsampled bilinearly to the model's
input size, blurred, coloured in either polarity and noised. Every draw comes
from the `torch.Generator` passed in, in a fixed order, so a seed fixes the
batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augment", "augment", "stroke_level", "stroke_variants"]


@dataclass(frozen=True)
class Augment:
    """Augmentation strengths (the `data.augment` section of a recipe)."""

    # weights of stroke changes -1 (thinner), 0, +1, +2, +3 (thicker, in canvas pixels per side)
    stroke: Sequence[float] = (0.15, 0.35, 0.25, 0.15, 0.1)
    rotate: float = 18.0  # max rotation, degrees
    scale: Sequence[float] = (0.6, 1.25)  # glyph scale range (1 = 80 % of the frame)
    aspect: float = 0.25  # max |log| of the width/height stretch
    shear: float = 0.25
    shift: float = 0.18  # max translation, as a fraction of the half-frame
    # side the image is captured at before upsampling; 0 = straight at the input size
    low_res: Sequence[int] = (6, 7, 8, 8, 8, 10, 12, 16, 0)
    quantize: float = 0.5  # chance of 17 grey levels at capture
    blur: float = 1.0  # max Gaussian sigma in output pixels
    blur_p: float = 0.5
    invert: float = 0.35  # chance of dark glyph on bright ground
    colour: float = 0.25  # chance of a coloured (not grey) glyph and ground
    fg_min: float = 0.55  # darkest foreground level of a grey glyph
    bg_max: float = 0.35  # brightest background level of a grey glyph
    noise: float = 0.08  # max pixel noise sigma


def augment(masks: torch.Tensor, size: int, cfg: Augment, g: torch.Generator) -> torch.Tensor:
    """Masks [B, 1, C, C] in [0, 1] (strokes already varied) -> RGB [B, 3, size, size] in [0, 1]."""
    x = _warp(masks, size, cfg, g)
    x = _capture(x, size, cfg, g)
    x = _blur(x, cfg, g)
    return _colour(x, cfg, g)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def stroke_variants(masks: torch.Tensor, cfg: Augment) -> torch.Tensor:
    """Masks [N, C, C] uint8 -> [levels, N, C, C]: eroded by 1, as drawn, dilated by 1, 2, ...

    Computed once for the bank (max-pooling a batch per step is slow on a CPU);
    `stroke_level` then draws one level per sample.
    """
    x = masks.float().unsqueeze(1)
    out = []
    for level in range(-1, len(cfg.stroke) - 1):
        k = 2 * abs(level) + 1
        if level == 0:
            y = x
        elif level > 0:
            y = F.max_pool2d(x, k, 1, level)
        else:
            y = -F.max_pool2d(-x, k, 1, -level)
        out.append(y.squeeze(1).to(torch.uint8))
    return torch.stack(out)


def stroke_level(n: int, cfg: Augment, g: torch.Generator) -> torch.Tensor:
    """Index into `stroke_variants`' first axis for `n` samples."""
    weights = torch.tensor(list(cfg.stroke), dtype=torch.float)
    return torch.multinomial(weights, n, replacement=True, generator=g)


def _warp(x: torch.Tensor, side: int, cfg: Augment, g: torch.Generator) -> torch.Tensor:
    """Rotate, scale, stretch, shear and shift each glyph, sampled onto `side` pixels."""
    n = x.shape[0]
    angle = _uniform(n, -cfg.rotate, cfg.rotate, g) * (math.pi / 180)
    scale = _uniform(n, cfg.scale[0], cfg.scale[1], g)
    aspect = torch.exp(_uniform(n, -cfg.aspect, cfg.aspect, g))
    shear = _uniform(n, -cfg.shear, cfg.shear, g)
    shift = _uniform(2 * n, -cfg.shift, cfg.shift, g).view(n, 2)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([cos, -sin, sin, cos], 1).view(n, 2, 2)
    slant = torch.eye(2).repeat(n, 1, 1)
    slant[:, 0, 1] = shear
    stretch = torch.diag_embed(torch.stack([scale * aspect.sqrt(), scale / aspect.sqrt()], 1))
    forward = rotation @ slant @ stretch
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], 2)
    grid = F.affine_grid(theta, [n, 1, side, side], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _capture(x: torch.Tensor, size: int, cfg: Augment, g: torch.Generator) -> torch.Tensor:
    """Area-average to a drawn low resolution, stretch to full range, upsample bilinearly."""
    n = x.shape[0]
    choices = torch.tensor(list(cfg.low_res))
    sides = choices[torch.randint(0, len(choices), (n,), generator=g)]
    quantize = torch.rand(n, generator=g) < cfg.quantize
    out = torch.empty(n, 1, size, size)
    for side in torch.unique(sides).tolist():
        rows = (sides == side).nonzero().flatten()
        low = F.interpolate(x[rows], size=(side or size,) * 2, mode="area")
        peak = low.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        low = (low / peak).clamp_(0, 1)
        q = quantize[rows].view(-1, 1, 1, 1)
        low = torch.where(q, (low * 16).round() / 16, low)
        if side and side != size:
            low = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        out[rows] = low
    return out


def _blur(x: torch.Tensor, cfg: Augment, g: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with a drawn sigma per sample (none for some)."""
    n, _, h, w = x.shape
    sigma = _uniform(n, 0.0, cfg.blur, g) * (torch.rand(n, generator=g) < cfg.blur_p)
    taps = torch.arange(-2, 3, dtype=torch.float)
    kernel = torch.exp(-(taps**2) / (2 * sigma.clamp_min(1e-3).unsqueeze(1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    y = x.view(1, n, h, w)
    y = F.conv2d(y, kernel.view(n, 1, 5, 1), padding=(2, 0), groups=n)
    y = F.conv2d(y, kernel.view(n, 1, 1, 5), padding=(0, 2), groups=n)
    return y.view(n, 1, h, w)


def _colour(mask: torch.Tensor, cfg: Augment, g: torch.Generator) -> torch.Tensor:
    """Foreground and background levels (grey or coloured), polarity, noise, 8-bit rounding."""
    n = mask.shape[0]
    fg = _uniform(n, cfg.fg_min, 1.0, g).view(n, 1).repeat(1, 3)
    bg = _uniform(n, 0.0, cfg.bg_max, g).view(n, 1).repeat(1, 3)
    coloured = (torch.rand(n, generator=g) < cfg.colour).view(n, 1)
    fg = torch.where(coloured, _uniform(3 * n, 0.4, 1.0, g).view(n, 3), fg)
    bg = torch.where(coloured, _uniform(3 * n, 0.0, 0.4, g).view(n, 3), bg)
    fg, bg = fg.view(n, 3, 1, 1), bg.view(n, 3, 1, 1)
    img = bg + (fg - bg) * mask
    invert = (torch.rand(n, generator=g) < cfg.invert).view(n, 1, 1, 1)
    img = torch.where(invert, 1 - img, img)
    sigma = _uniform(n, 0.0, cfg.noise, g).view(n, 1, 1, 1)
    img = img + sigma * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round() / 255
