"""A model with its tuning method applied, split into trainable state and frozen base.

The trainable state (exactly the tensors with `requires_grad`) is what travels
each round; the base is everything else and is identified by its fingerprint.
Training never changes the base: `train_mode` leaves frozen modules, and every
BatchNorm, in eval mode, so running statistics stay the pretrained ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from shared.api import TensorInfo
from shared.blobs import dtype_name, tensor_bytes
from shared.models.base import Preprocess, VisionClassifier

__all__ = ["BuiltModel", "fingerprint", "train_mode"]

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over tensors in sorted name order: name, dtype, shape, raw bytes of each."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, dtype_name(t.dtype), list(t.shape)]).encode() + b"\n")
        h.update(tensor_bytes(t))
    return h.hexdigest()


def train_mode(model: nn.Module) -> None:
    """Training mode for what trains, eval mode for the frozen base.

    `model.train()` alone would switch every module: BatchNorm layers would
    update their running statistics (buffers of the base, under every method,
    `full` included), so one local step would change the base fingerprint. Here
    a module with parameters or buffers of its own, none of them trainable,
    stays in eval mode, and so does every BatchNorm: FedTune never aggregates
    buffers, so batch statistics stay the pretrained ones (BatchNorm's affine
    weights still train where the method trains them). Stateless modules
    (dropout, activations) follow training mode.
    """
    model.train()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        has_state = bool(own) or any(True for _ in module.buffers(recurse=False))
        frozen = has_state and not any(p.requires_grad for p in own)
        if frozen or isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.training = False  # this module only: its children decide for themselves


class BuiltModel:
    """`model(pixel_values) -> logits`, plus the state split FedTune exchanges."""

    def __init__(
        self,
        model: VisionClassifier,
        preprocess: Preprocess,
        method_params: list[str],
        head_params: list[str],
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.method_params = sorted(method_params)  # what the method itself trains
        self.head_params = sorted(head_params)  # head trained on top of it
        self._trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    @property
    def image_size(self) -> int:
        return self.preprocess.size

    @property
    def trainable_names(self) -> list[str]:
        return sorted(self._trainable)

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self._trainable.values())

    @property
    def num_total(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Detached CPU clones of the trainable tensors, sorted by name."""
        return {n: self._trainable[n].detach().to("cpu").clone() for n in self.trainable_names}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy values in; the key set and shapes must match exactly."""
        missing = sorted(set(self._trainable) - set(state))
        extra = sorted(set(state) - set(self._trainable))
        if missing:
            raise ValueError(f"trainable state is missing tensor {missing[0]!r}")
        if extra:
            raise ValueError(f"trainable state has unexpected tensor {extra[0]!r}")
        for name, param in self._trainable.items():
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"trainable tensor {name!r} has shape {list(value.shape)}, "
                    f"expected {list(param.shape)}"
                )
        with torch.no_grad():
            for name, param in self._trainable.items():
                param.copy_(state[name].to(device=param.device, dtype=param.dtype))

    def manifest(self) -> dict[str, TensorInfo]:
        return {
            n: TensorInfo(shape=list(p.shape), dtype=dtype_name(p.dtype))
            for n, p in sorted(self._trainable.items())
        }

    def base_state(self) -> dict[str, torch.Tensor]:
        """Every frozen tensor: parameters and persistent buffers that do not train."""
        return {
            n: t.detach()
            for n, t in sorted(self.model.state_dict(keep_vars=True).items())
            if n not in self._trainable
        }

    def load_base_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a base strictly: exactly the frozen tensors, with their shapes."""
        expected = self.base_state()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            which = f"is missing {missing[0]!r}" if missing else f"has unexpected {extra[0]!r}"
            raise ValueError(f"base state does not fit the model: it {which}")
        for name, target in expected.items():
            if tuple(state[name].shape) != tuple(target.shape):
                raise ValueError(
                    f"base tensor {name!r} has shape {list(state[name].shape)}, "
                    f"expected {list(target.shape)}"
                )
        with torch.no_grad():
            for name, target in expected.items():
                target.copy_(state[name].to(device=target.device, dtype=target.dtype))

    def base_fingerprint(self) -> str:
        return fingerprint(self.base_state())

    def transform(self, train: bool) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> normalised [3, H, W]; training adds a light random crop.

        The crop draws from torch's global CPU RNG: a caller that wants it
        reproducible seeds that per sample (the client's `ImageDataset` does).
        """
        p = self.preprocess
        mode = _INTERPOLATION.get(p.interpolation, T.InterpolationMode.BICUBIC)
        resize: list[Callable[..., object]]
        if train:
            resize = [
                T.RandomResizedCrop(p.size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=mode)
            ]
        else:
            resize = [T.Resize(p.size, interpolation=mode), T.CenterCrop(p.size)]
        return T.Compose([_to_rgb, *resize, T.ToTensor(), T.Normalize(p.mean, p.std)])


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
