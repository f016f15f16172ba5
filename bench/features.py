"""Linear probing on cached features.

A method that trains nothing but the head, over a frozen backbone kept in eval mode, sees the
same feature for an image in every epoch as long as the image itself does not change (no random
augmentation). Its features are then computed once, and the head trains on them: the same
optimizer, schedule and seeded shuffle as the per-epoch path, so the same run up to float
rounding, for the cost of one forward pass instead of one per epoch.

A method declares that it can be run this way with `register_method(..., head_only=True)`; the
engine checks the model it builds before using the cache (`blocker` says why not, if not).
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch.utils.data import DataLoader, Dataset

from .data import DecodedDataset, DecodedSplit, random_augmentation
from .model import PeftModel
from .method import Method
from .suite import Suite


def blocker(method: Method, model: torch.nn.Module, suite: Suite) -> str | None:
    """Why this run cannot train on cached features; None when it can."""
    if not method.head_only:
        return f"method {method.name!r} does not declare head_only"
    if not isinstance(model, PeftModel) or type(model).forward is not PeftModel.forward:
        return "the model is not PeftModel's head(features(x))"
    if not model.frozen_backbone:
        return "the backbone is not kept in eval mode"
    outside = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    if outside:
        return f"parameters outside the head train ({outside[0]}, ...)"
    if random_augmentation(suite, train=True):
        return f"the suite's {suite.transform!r} transform augments at random"
    return None


class CachedFeatures(Dataset):
    """`model.features` of every image of a training split, as (features, labels) batches on
    `device`, indexed like `DecodedDataset`.

    The features are computed on first use, so inside the first epoch (its time and memory are
    the run's): in the model's training mode (its backbone stays in eval mode), under the run's
    autocast dtype, without gradients, exactly as the per-epoch path computes them."""

    def __init__(self, model: PeftModel, images, batch_size: int, device: torch.device,
                 dtype: torch.dtype | None = None, workers: int = 0, stats: dict | None = None):
        self.model, self.images, self.batch_size = model, images, batch_size
        self.device, self.dtype, self.workers = device, dtype, workers
        self.stats = stats if stats is not None else {}
        self.cached: DecodedDataset | None = None
        self.n = len(images)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if self.cached is None:
            self.cached = self.extract()
        return self.cached[index]

    @torch.no_grad()
    def extract(self) -> DecodedDataset:
        t0 = time.perf_counter()
        model, images, bs = self.model, self.images, self.batch_size
        was_training = model.training
        model.train()
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        if isinstance(images, DecodedDataset):
            batches = (images[list(range(i, min(i + bs, len(images))))] for i in range(0, len(images), bs))
        else:  # a split streamed from disk; a private generator leaves the global RNG alone
            batches = DataLoader(images, batch_size=bs, shuffle=False, num_workers=self.workers,
                                 generator=torch.Generator())
        feats, labels = [], []
        with autocast:
            for x, y in batches:
                feats.append(model.features(x.to(self.device, non_blocking=True)))
                labels.append(torch.as_tensor(y).to(self.device))
        model.train(was_training)
        cached = DecodedDataset(DecodedSplit(torch.cat(feats), torch.cat(labels), key="features"),
                                augment=_identity)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats["feature_seconds"] = time.perf_counter() - t0
        self.images = None  # the images are not needed any more
        return cached


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
