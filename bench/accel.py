"""What makes a run as fast as the hardware, kept out of the engine's training loop.

- Data: every split is decoded and resized once into uint8 tensors (`bench.data.decode_split`);
  batches are cut from that tensor and normalised per batch, on the run's device. A split larger
  than the memory budget is streamed image by image instead.
- Features: a head-only method trains on features computed once (`bench.features`).
- Precision: `auto` is bf16 autocast on CUDA and fp32 elsewhere; TF32 matmuls on CUDA.
- `torch.compile` of the model's forward, and channels-last inputs, as options.

`prepare` returns the model and training loader the engine's loop should use: the method's own
model when no option changes it (fp32 on the CPU), else a `RunModel` that wraps it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import features
from .data import (DecodedDataset, ImageDataset, SplitItems, batch_loader, build_transforms,
                   decode_split, random_augmentation)
from .errors import UserError
from .method import get_method
from .spec import RunSpec
from .suite import Suite

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on CUDA (where it is fast), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def loader(suite: Suite, split: SplitItems, mean, std, train: bool, batch_size: int,
           gen: torch.Generator | None, opts, interpolation: str | None = None) -> tuple[Any, DataLoader]:
    """(dataset, loader) for one split of a run; `dataset.decode_seconds` is the time spent
    decoding its images before the run (0 when they were decoded before).

    The training split lives on the run's device; an evaluation split stays in host memory and
    each batch goes to the device as uint8. Shuffling draws from `gen` exactly as
    `DataLoader(shuffle=True, generator=gen)` does."""
    transforms = build_transforms(suite, mean, std, train=train, interpolation=interpolation)
    cache = opts.decode_cache or os.environ.get("PEFTBENCH_DECODE_CACHE") or "memory"
    decoded = decode_split(split, transforms[0], workers=opts.workers, cache=cache)
    if decoded is None:  # larger than the memory budget: read image by image, as before
        dataset = ImageDataset(split.items, transforms)
        dataset.decode_seconds = 0.0
        return dataset, DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=gen,
                                   num_workers=opts.workers, persistent_workers=opts.workers > 0)
    dataset = DecodedDataset(decoded, transforms[1], per_image=random_augmentation(suite, train),
                             device=opts.device, resident=train)
    dataset.decode_seconds = decoded.seconds
    return dataset, batch_loader(dataset, batch_size, shuffle=train, gen=gen)


class RunModel(nn.Module):
    """The method's model as the engine drives it when a speed option is on.

    forward runs under the run's autocast and returns fp32 logits (the loss is computed in
    fp32, as autocast would); on cached features it is the head alone while training, and the
    whole model on images in eval mode. Everything else (hooks, parameter groups, counts,
    trainable state) is the wrapped model's."""

    def __init__(self, inner: nn.Module, device: torch.device, dtype: torch.dtype | None = None,
                 on_features: bool = False, compile: bool = False, channels_last: bool = False):
        super().__init__()
        self.inner = inner
        self.device_type = device.type
        self.dtype = dtype
        self.on_features = on_features
        self.channels_last = channels_last
        # not a submodule: the compiled module shares the wrapped model's parameters
        object.__setattr__(self, "_call", torch.compile(inner) if compile else inner)

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            if self.training and self.on_features:
                out = self.inner.head(x)
            else:
                if self.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = self._call(x)
        return out.float()

    def train(self, mode: bool = True) -> "RunModel":
        if mode and self.on_features:
            # training runs the head alone: only its mode matters (the backbone stays in eval
            # mode, as PeftModel keeps a frozen one), and the walk over the backbone's modules
            # is skipped at every epoch
            self.training = self.inner.training = True
            self.inner.head.train(True)
            return self
        return super().train(mode)

    # the hooks the loop calls at every step, without __getattr__'s detour
    def regularization(self):
        return self.inner.regularization()

    def after_optimizer_step(self) -> None:
        self.inner.after_optimizer_step()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


@contextlib.contextmanager
def tf32(device: torch.device):
    """On CUDA, fp32 matmuls and convolutions in TF32 while a run trains and evaluates; the
    process's previous settings come back afterwards (they are process-wide)."""
    if device.type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@dataclass
class Setup:
    model: nn.Module
    train_loader: Any
    metrics: dict[str, Any] = field(default_factory=dict)


def prepare(spec: RunSpec, suite: Suite, model: nn.Module, train_loader, eval_loader, opts) -> Setup:
    """Apply the run's speed options to `model` (already on the device) and its training data.
    `Setup.metrics` is filled in as the run goes (the features' time once they are computed)."""
    device = opts.device
    hp = spec.hparams
    precision = resolve_precision(spec.precision or "auto", device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    channels_last = bool(opts.channels_last) and device.type == "cuda"
    metrics: dict[str, Any] = {
        "precision": precision, "compile": bool(opts.compile),
        "decode_seconds": sum(getattr(dl.dataset, "decode_seconds", 0.0) for dl in (train_loader, eval_loader)),
    }
    if device.type == "cuda":
        metrics["tf32"] = True  # set for the run's duration by `tf32`
        metrics["channels_last"] = channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)

    on_features = bool(opts.feature_cache) and features.blocker(get_method(spec.method), model, suite) is None
    metrics["feature_cache"] = on_features
    if on_features:
        cached = features.CachedFeatures(model, train_loader.dataset, hp["eval_batch_size"], device, dtype,
                                         opts.workers, stats=metrics)
        train_loader = batch_loader(cached, hp["batch_size"], shuffle=True, gen=train_loader.generator)
    if on_features or dtype is not None or opts.compile or channels_last:
        model = RunModel(model, device, dtype, on_features, bool(opts.compile), channels_last)
    return Setup(model, train_loader, metrics)
