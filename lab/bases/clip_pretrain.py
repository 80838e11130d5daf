"""Contrastive pre-training of a small open_clip CLIP on glyph images and their captions.

The model is `open_clip.create_model(arch)` at seeded random init, trained
with CLIP's symmetric InfoNCE loss. Because a batch holds several images of
the same concept, captions of the same class count as positives (the target
row is spread evenly over them), which keeps the loss from pushing apart
true matches. Images get exactly the normalisation the product applies at
fine-tuning time (the config's preprocess: OpenAI mean/std); they are made at
the model's input size, so the product's resize is the identity on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lab.bases.glyphs import CLASSES, GlyphBatch, GlyphData, caption_texts
from lab.bases.training import Log, Recipe, adamw, generator, run_steps
from shared.models.base import seeded
from shared.models.configs import register_open_clip_configs
from shared.models.open_clip_family import quiet_random_init
from shared.models.synthetic import OPEN_CLIP_WEIGHTS, SyntheticBase

__all__ = ["pretrain_clip"]

MAX_LOGIT_SCALE = 4.6052  # ln(100), as in open_clip's training loop


def pretrain_clip(base: SyntheticBase, recipe: Recipe, dest: Path, log: Log) -> dict[str, Any]:
    """Train, write `dest/open_clip_model.safetensors`, return the held-out metrics."""
    register_open_clip_configs()
    with seeded(recipe.seed, "init"), quiet_random_init():
        model = open_clip.create_model(base.arch, pretrained=None)
    normalize = _normalizer(model, recipe.data.image_size)
    tokens = _caption_tokens(base.arch)
    full_embedding, used = model.token_embedding, torch.unique(tokens)
    model.token_embedding = _rows(full_embedding, used)
    tokens = torch.searchsorted(used, tokens)  # monotone, so argmax pooling finds the same eot
    data = GlyphData(recipe.data)
    optimizer = adamw(model, recipe, _embedding, betas=(0.9, 0.98), eps=1e-6)

    def loss_of(batch: GlyphBatch) -> torch.Tensor:
        classes, targets = torch.unique(batch.labels, return_inverse=True)
        image = model.encode_image(normalize(batch.images), normalize=True)
        text = encode_text(model, _trim(tokens[classes, _first_templates(batch, targets)]))
        return contrastive_loss(image, text, model.logit_scale.exp(), targets)

    def clamp_logit_scale() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    run_steps(model, optimizer, data, recipe, log, loss_of, clamp_logit_scale)
    metrics = _evaluate(model, data, tokens, normalize, recipe)
    with torch.no_grad():
        full_embedding.weight[used] = model.token_embedding.weight
    model.token_embedding = full_embedding
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(dest / OPEN_CLIP_WEIGHTS))
    return metrics


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between B images and one caption per class present in the batch.

    A batch of glyphs holds several images of a class; captioning each class
    once (image i matches caption `targets[i]`) avoids treating captions of
    the same class as negatives. Caption-to-image spreads its target over all
    images of its class.
    """
    logits = scale * image @ text.t()  # [B, K]
    image_to_text = F.cross_entropy(logits, targets)
    member = F.one_hot(targets, text.shape[0]).t().float()  # [K, B]
    spread = member / member.sum(1, keepdim=True)
    text_to_image = -(spread * logits.t().log_softmax(1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


def _first_templates(batch: GlyphBatch, targets: torch.Tensor) -> torch.Tensor:
    """For each class present, the template drawn for its first image in the batch."""
    order = torch.arange(len(targets))
    first = torch.full((int(targets.max()) + 1,), len(targets)).scatter_reduce(
        0, targets, order, reduce="amin"
    )
    return batch.templates[first]


def _trim(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the padding columns no caption of this batch reaches (see `encode_text`)."""
    return tokens[:, : int((tokens != 0).sum(1).max())]


def _normalizer(model: Any, size: int) -> Any:
    cfg = open_clip.get_model_preprocess_cfg(model)
    model_size = cfg.get("size", size)
    model_size = model_size[0] if isinstance(model_size, list | tuple) else model_size
    if model_size != size:
        raise ValueError(
            f"recipe data.image_size {size} is not the model's input size {model_size}"
        )
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return lambda images: (images - mean) / std


def encode_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens, normalize=True)` on tokens cut to the captions' length.

    The text transformer is causal and pools at the end-of-text token, so the
    positions after it never reach the output: cutting them off changes
    nothing but the cost (the captions fill about half of the context).
    """
    n = tokens.shape[-1]
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    pool = getattr(model, "text_pool_type", "argmax")
    x = open_clip.transformer.text_global_pool(x, tokens, pool, getattr(model, "text_eos_id", None))
    return F.normalize(x @ model.text_projection, dim=-1)


def _rows(embedding: nn.Embedding, used: torch.Tensor) -> nn.Embedding:
    """The rows of the token embedding that captions use, as their own small embedding.

    Rows no caption uses would get zero gradients, and AdamW (no weight decay on
    embeddings) leaves those unchanged, so training only the used rows gives the
    same weights as training the whole 49k-row table, at a fraction of the cost.
    """
    rows = nn.Embedding(len(used), embedding.embedding_dim)
    with torch.no_grad():
        rows.weight.copy_(embedding.weight[used])
    return rows


def _caption_tokens(arch: str) -> torch.Tensor:
    """Token ids of every caption, [classes, templates, context]."""
    captions = caption_texts()
    tokenizer = open_clip.get_tokenizer(arch)
    flat = tokenizer([c for row in captions for c in row])
    if int((flat != 0).sum(1).max()) >= flat.shape[1]:
        raise ValueError(f"a caption does not fit {arch}'s text context of {flat.shape[1]}")
    return flat.view(len(captions), len(captions[0]), -1)


def _embedding(name: str) -> bool:
    """Embeddings and the logit scale take no weight decay."""
    return "embedding" in name or name.endswith("class_embedding")


@torch.no_grad()
def _evaluate(
    model: Any, data: GlyphData, tokens: torch.Tensor, normalize: Any, recipe: Recipe
) -> dict[str, Any]:
    """Zero-shot accuracy on a fresh seeded glyph batch, prompts of template 0."""
    batch = data.sample(recipe.eval_samples, generator(recipe.seed, "eval"))
    image = model.encode_image(normalize(batch.images), normalize=True)
    text = encode_text(model, _trim(tokens[:, 0]))
    predicted = (image @ text.t()).argmax(1)
    digits = [i for i, (kind, _, _) in enumerate(CLASSES) if kind == "digit"]
    is_digit = batch.labels < len(digits)
    digit_predicted = (image[is_digit] @ text[digits].t()).argmax(1)
    return {
        "held_out_samples": recipe.eval_samples,
        "zero_shot_accuracy": float((predicted == batch.labels).float().mean()),
        "zero_shot_accuracy_digits_10_way": float(
            (digit_predicted == batch.labels[is_digit]).float().mean()
        ),
        "logit_scale": float(model.logit_scale.exp()),
        "metric": "zero-shot top-1 over the glyph classes on a fresh seeded batch "
        "(prompts of the first template); digits also 10-way among digit prompts",
    }
