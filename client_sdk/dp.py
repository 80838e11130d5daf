"""Client-side DP-SGD (`local_training.dp`): per-example gradients, clipped and noised by
Opacus, and the organisation's ε from Opacus's accountant.

Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep Learning with Differential
Privacy", CCS 2016. Every local step computes each example's gradient of the trainable
tensors, clips it to `max_grad_norm`, sums, adds Gaussian noise of std
`noise_multiplier x max_grad_norm` and divides by the batch size (`DPOptimizer`). The frozen
base gets no gradient at all.

Per-example gradients come from `torch.func` (`vmap` of `grad` over `functional_call` of the
whole model), not from Opacus's per-layer grad samplers: those know a fixed list of layers and
fall back to functorch one module at a time, calling each with a single input, which fails for
`nn.MultiheadAttention` (query, key, value: open_clip's attention, whose in-projection biases
bias tuning trains) and cannot reach a parameter used outside any layer's forward (CLIP's
zero-shot head, CoOp's context vectors). Over the whole model every method on both families
works, with frozen modules and BatchNorm kept in eval mode (`train_mode`) so that no example's
output depends on another's. Memory grows with batch x trainable parameters: fine for the
lightweight methods, heavy for `full`.

Accounting: a round runs `steps` steps over shuffled batches of `batch_size` out of `n`
examples, accounted as `steps` steps of the subsampled Gaussian mechanism at sample rate
`batch_size / n` (the usual approximation for shuffled batches; Opacus's Poisson sampling would
make it exact at the cost of FedTune's reproducible batch order). `dp_epsilon` is the
organisation's ε over rounds 1..r, as if it had trained in every one of them (an upper bound
that needs no memory of past rounds); `dp_epsilon_round` is the round's alone.

Noise (`dp.noise_source`): `system`, the default, draws each round's noise from a torch
generator under a fresh 64-bit seed from the operating system's CSPRNG, held only in memory,
with Opacus's `secure_mode` (noise summed from several draws, against floating-point attacks on
the Gaussian sampler): nobody else knows the seed, so nobody can subtract the noise; a client
restarted mid-round draws anew. `seeded` draws from torch's generator seeded like the rest of
local training (a round is reproducible), which the service and every member can recompute
from the spec and the organisation's name: tests and research only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from client_sdk._exceptions import FedTuneError
from shared.privacy import LocalDPSpec, epsilon

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

__all__ = ["DPSGD", "DPSGDError"]


class DPSGDError(FedTuneError):
    """DP-SGD cannot run as configured here."""


class DPSGD:
    """DP-SGD for one trainer: wraps its optimiser, computes per-example gradients, accounts."""

    def __init__(self, model: nn.Module, dp: LocalDPSpec, batch_size: int, num_examples: int):
        if num_examples <= 0:
            raise DPSGDError("local_training.dp: no training examples to account for")
        self.model, self.dp, self.batch_size = model, dp, batch_size
        self.trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.trainable:
            raise DPSGDError("local_training.dp: the method leaves nothing trainable")
        self.sample_rate = min(1.0, batch_size / num_examples)

    def wrap(self, optimizer: torch.optim.Optimizer) -> DPOptimizer:
        """The optimiser that clips each example's gradient and adds the noise before stepping."""
        from opacus.optimizers import DPOptimizer  # imported here: only DP-SGD pays for it

        generator = None  # seeded: torch's default generator, seeded by the trainer
        if self.dp.noise_source == "system":
            device = next(iter(self.trainable.values())).device
            generator = torch.Generator(device=device)
            generator.manual_seed(int.from_bytes(os.urandom(8), "little"))
        return DPOptimizer(
            optimizer,
            noise_multiplier=self.dp.noise_multiplier,
            max_grad_norm=self.dp.max_grad_norm,
            expected_batch_size=self.batch_size,
            loss_reduction="mean",
            generator=generator,
            secure_mode=generator is not None,
        )

    def per_example_grads(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """Set every trainable tensor's `grad_sample` ([batch, *shape]); (mean loss, correct)."""
        model = self.model
        params = {n: p.detach() for n, p in self.trainable.items()}

        def one(
            ps: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            logits = functional_call(model, ps, (x.unsqueeze(0),), strict=False)
            loss = nn.functional.cross_entropy(logits.float(), y.unsqueeze(0))
            return loss, logits.squeeze(0)

        per_example: Callable[..., tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]]
        per_example = vmap(
            grad_and_value(one, has_aux=True), in_dims=(None, 0, 0), randomness="different"
        )
        fastpath = torch.backends.mha.get_fastpath_enabled()
        # nn.MultiheadAttention's inference fast path sees no gradient under vmap(grad) when
        # only its input needs one (visual prompts into a frozen block) and returns none.
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            grads, (losses, logits) = per_example(params, images, labels)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        for name, p in self.trainable.items():
            p.grad_sample = grads[name].detach()  # type: ignore[attr-defined]  # read by DPOptimizer
        correct = int((logits.argmax(-1) == labels).sum())
        return float(losses.detach().mean()), correct

    def epsilons(self, round: int, steps: int) -> dict[str, float]:
        """`dp_epsilon` (rounds 1..round, each of `steps` steps) and `dp_epsilon_round`."""
        dp = self.dp
        if steps <= 0:
            return {}
        q = self.sample_rate
        return {
            "dp_epsilon": epsilon(dp.noise_multiplier, [q] * round, dp.delta, dp.accountant, steps),
            "dp_epsilon_round": epsilon(dp.noise_multiplier, [q], dp.delta, dp.accountant, steps),
        }
