"""`lora`: low-rank adaptation (Hu et al., 2021) of the attention and optionally MLP projections.

Linear layers (transformers ViT's `q_proj`/`v_proj`, every MLP linear) are
wrapped by `peft`'s own LoRA layer through `inject_adapter_in_model`.

open_clip's attention is a fused `nn.MultiheadAttention` (one `in_proj_weight`
for query, key and value). peft's LoRA for that module adapts the whole fused
in_proj *and* out_proj with no way to pick query and value, and it works by
merging the low-rank product into the frozen weight before each forward and
subtracting it after: float round-off then changes the frozen base, which
would break the base fingerprint every client checks. So open_clip attention
gets a small hand-made wrapper instead: it leaves the fused weight untouched
and adds low-rank terms to the query and value projections only, as in the
LoRA paper and as peft does for the ViT. Both give r x (d_in + d_out)
parameters per adapted projection.

Under federated averaging, averaging A and B separately is not averaging the
update: mean(B_i) mean(A_i) != mean(B_i A_i) once clients' A drift apart
(10-73 % relative error per projection after one round of two non-IID
clients). `freeze_a: true` is FFA-LoRA (Sun et al., 2024): A stays at its
seeded initialisation and only B trains, so every client's update shares the
same A and FedAvg of B is exactly FedAvg of B A; it also halves what travels
(r x d_out per projection). A frozen A is part of the frozen base: it is drawn
from the spec's seed when the model is built (identical on every machine) and
covered by the base fingerprint every client checks. The default stays
`false`, plain LoRA: a stored spec holds only the options it was given, so a
new default would silently change the trainable state of federations created
before it. New federations should set `freeze_a: true`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from shared.methods import LoraOptions
from shared.models.base import VisionClassifier
from shared.tuning.registry import TuningMethod, register_method


class LowRank(nn.Module):
    """`scaling * B(A(dropout(x)))` with A seeded (Kaiming) and B zero, so it starts as a no-op."""

    def __init__(self, d_in: int, d_out: int, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(d_in, r, bias=False)
        self.lora_B = nn.Linear(r, d_out, bias=False)
        self.scaling = alpha / r
        nn.init.kaiming_uniform_(self.lora_A.weight, a=5**0.5)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


class LoraMultiheadAttention(nn.Module):
    """Self-attention of a frozen `nn.MultiheadAttention` with LoRA on query and value."""

    def __init__(self, base: nn.MultiheadAttention, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if not base._qkv_same_embed_dim:
            raise ValueError("LoRA needs attention with one fused in_proj (same q/k/v width)")
        self.base_layer = base
        d = base.embed_dim
        self.lora_q = LowRank(d, d, r, alpha, dropout)
        self.lora_v = LowRank(d, d, r, alpha, dropout)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> tuple[torch.Tensor, None]:
        base = self.base_layer
        if key_padding_mask is not None:
            raise ValueError("LoRA attention does not support key_padding_mask")
        if not base.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        w_q, w_k, w_v = base.in_proj_weight.chunk(3)
        b_q, b_k, b_v = base.in_proj_bias.chunk(3) if base.in_proj_bias is not None else (None,) * 3
        q = F.linear(query, w_q, b_q) + self.lora_q(query)
        k = F.linear(key, w_k, b_k)
        v = F.linear(value, w_v, b_v) + self.lora_v(value)
        batch, length, width = q.shape
        heads = base.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, -1, heads, width // heads).transpose(1, 2)

        if attn_mask is not None and attn_mask.dtype == torch.bool:  # MHA: True = masked out
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(
                attn_mask, float("-inf")
            )
        out = F.scaled_dot_product_attention(
            split(q),
            split(k),
            split(v),
            attn_mask=attn_mask,
            dropout_p=base.dropout if self.training else 0.0,
        )
        out = base.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        return (out if base.batch_first else out.transpose(0, 1)), None

    @torch.no_grad()
    def merged(self) -> dict[str, torch.Tensor]:
        """The plain `nn.MultiheadAttention` state: `in_proj_weight` + [dQ; 0; dV]."""
        state = {n: t.detach().clone() for n, t in self.base_layer.state_dict().items()}
        weight = state["in_proj_weight"]
        d = self.base_layer.embed_dim
        weight[:d] += _delta(self.lora_q).to(weight.dtype)
        weight[2 * d :] += _delta(self.lora_v).to(weight.dtype)
        return state


def _delta(low_rank: LowRank) -> torch.Tensor:
    """`scaling * B @ A`, the weight the low-rank term adds (dropout is off at inference)."""
    a, b = low_rank.lora_A.weight.float(), low_rank.lora_B.weight.float()
    return (b @ a) * low_rank.scaling


@register_method
class Lora(TuningMethod):
    name = "lora"

    def apply(self, model: VisionClassifier, options: LoraOptions) -> list[str]:
        linears: list[str] = []
        for kind in options.targets:
            for name in model.lora_targets(kind):
                module = model.get_submodule(name)
                if isinstance(module, nn.MultiheadAttention):
                    parent, _, leaf = name.rpartition(".")
                    wrapped = LoraMultiheadAttention(
                        module, options.r, options.alpha, options.dropout
                    )
                    setattr(model.get_submodule(parent), leaf, wrapped)
                elif isinstance(module, nn.Linear):
                    linears.append(name)
                else:
                    raise ValueError(f"LoRA cannot wrap {name} ({type(module).__name__})")
        if linears:
            config = LoraConfig(
                r=options.r,
                lora_alpha=options.alpha,  # type: ignore[arg-type]
                lora_dropout=options.dropout,
                target_modules=linears,
                bias="none",
            )
            inject_adapter_in_model(config, model)
        # wrapping renames the frozen weights (`...base_layer.weight`); the new ones are lora_*
        trained = ".lora_B" if options.freeze_a else ".lora_"
        return sorted(n for n, _ in model.named_parameters() if trained in n)

    @torch.no_grad()
    def plain_state(self, model: VisionClassifier) -> dict[str, torch.Tensor]:
        """Every LoRA product added to the weight it adapts, under the library's own names."""
        merged: dict[str, torch.Tensor] = {}
        wrapped: list[str] = []
        for name, module in model.named_modules():
            if isinstance(module, LoraMultiheadAttention):
                state = module.merged()
            elif isinstance(module, LoraLinear):
                base = module.get_base_layer()
                state = {n: t.detach().clone() for n, t in base.state_dict().items()}
                for adapter in module.active_adapters:
                    delta = module.get_delta_weight(adapter)
                    state["weight"] += delta.to(state["weight"].dtype)
            else:
                continue
            wrapped.append(name + ".")
            merged.update({f"{name}.{n}": t for n, t in state.items()})
        plain = {
            n: t.detach()
            for n, t in model.state_dict().items()
            if not any(n.startswith(prefix) for prefix in wrapped)
        }
        return {**plain, **merged}
