"""How much a self-made base helps, measured through the product's own code path.

    python -m lab.bases.probe                        # the registered bases, from the cache
    python -m lab.bases.probe --clip PATH --vit DIR  # bases built elsewhere (build_base_to)

For each family it builds `shared.tuning.build(spec)` with `model.pretrained`
set to the base and to null (seeded random init), then for every lightweight
method trains centrally for a few epochs on scikit-learn's digits (80 %,
stratified) with the product's training transform, and reports accuracy on
the held-out 20 %; for CLIP also the zero-shot accuracy of the prompt head
before any training. A check of the bases, not a benchmark: one seed, one
learning rate for every method and both initialisations.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import torch
import transformers

from lab.datasets import DIGIT_CLASSES, DIGIT_PROMPT, LabeledImages, load_digits, split_held_out
from lab.evaluation import accuracy
from shared.methods import method_names
from shared.models.synthetic import find_base
from shared.spec import FederationSpec, parse_spec
from shared.tuning import BuiltModel, build, get_method

__all__ = ["FAMILIES", "main", "probe_method", "zero_shot"]

TAG = "fedtune-synth-v1"
# family -> (arch, methods)
FAMILIES = {
    "open_clip": ("fedtune-synth-clip", [m for m in method_names("open_clip") if m != "full"]),
    "hf_vit": ("fedtune-tiny-vit", [m for m in method_names("hf_vit") if m != "full"]),
}


def _spec(family: str, arch: str, pretrained: str | None, method: str, lr: float) -> FederationSpec:
    trains_head = get_method(method).accepts_train_head and method != "head"
    return parse_spec(
        {
            "name": f"probe-{family}-{method}",
            "model": {"family": family, "arch": arch, "pretrained": pretrained},
            "task": {"classes": DIGIT_CLASSES, "prompt_template": DIGIT_PROMPT},
            "method": {"name": method, "train_head": family == "open_clip" and trains_head},
            "local_training": {"epochs": 1, "batch_size": 32, "optimizer": "adamw", "lr": lr},
            "seed": 0,
        }
    )


def _train(bm: BuiltModel, data: LabeledImages, epochs: int, lr: float) -> None:
    """Imitates the client's LocalTrainer: AdamW on the trainable tensors, shuffled batches."""
    transform = bm.transform(True)
    params = [p for p in bm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(0)
    labels = torch.tensor(data.labels)
    bm.model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(data), generator=order).split(32):
            images = torch.stack([transform(data.images[i]) for i in batch.tolist()])
            loss = torch.nn.functional.cross_entropy(bm.model(images), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    bm.model.eval()


def zero_shot(family: str, arch: str, pretrained: str | None, test: LabeledImages) -> float:
    """Accuracy of CLIP's prompt head before any training."""
    return accuracy(build(_spec(family, arch, pretrained, "head", 1e-3)), test)


def probe_method(
    family: str,
    arch: str,
    pretrained: str | None,
    method: str,
    splits: tuple[LabeledImages, LabeledImages],
    *,
    epochs: int,
    lr: float,
) -> float:
    """Held-out accuracy after `epochs` epochs of `method` from the given base."""
    bm = build(_spec(family, arch, pretrained, method, lr))
    _train(bm, splits[0], epochs, lr)
    return accuracy(bm, splits[1])


def _weights(family: str, arch: str, given: str | None) -> str:
    if given:
        return given
    base = find_base(arch, TAG)
    if base is None or not base.is_built():
        raise SystemExit(
            f"probe: {arch}:{TAG} is not built; run fedtune-study build-base --arch {arch} --tag {TAG}"
        )
    return str(base.weights_path())


def _run_family(family: str, weights: str, args: argparse.Namespace, splits: Any) -> None:
    arch, methods = FAMILIES[family]
    if args.methods:
        methods = [m for m in methods if m in args.methods]
    print(f"\n{family} {arch}: base {weights}")
    print(f"  {'method':12} {'pretrained':>10} {'random':>8} {'gain':>7}")
    if family == "open_clip":
        pre, rnd = (zero_shot(family, arch, w, splits[1]) for w in (weights, None))
        print(f"  {'zero-shot':12} {pre:10.3f} {rnd:8.3f} {pre - rnd:+7.3f}", flush=True)
    for method in methods:
        started = time.perf_counter()
        pre, rnd = (
            probe_method(family, arch, w, method, splits, epochs=args.epochs, lr=args.lr)
            for w in (weights, None)
        )
        seconds = time.perf_counter() - started
        print(
            f"  {method:12} {pre:10.3f} {rnd:8.3f} {pre - rnd:+7.3f}  ({seconds:.0f} s)", flush=True
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bases.probe", description=__doc__)
    parser.add_argument("--clip", help="open_clip weights file (default: the cached base)")
    parser.add_argument("--vit", help="ViT save_pretrained directory (default: the cached base)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--methods", nargs="*", help="only these methods")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.logging.set_verbosity_error()  # the head swap's load report is expected
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    digits = load_digits()
    train, test = split_held_out(digits.labels, 0.2, np.random.default_rng(0))
    splits = (digits.subset(train), digits.subset(test))
    print(f"digits: {len(train)} train, {len(test)} held out; {args.epochs} epochs, lr {args.lr}")
    given = {"open_clip": args.clip, "hf_vit": args.vit}
    for family in args.families:
        _run_family(family, _weights(family, FAMILIES[family][0], given[family]), args, splits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
