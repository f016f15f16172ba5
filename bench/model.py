"""The model a method returns: a (partly) frozen backbone, the method's own modules, a head.

Methods subclass `PeftModel` and override `features`; the engine only ever calls `forward`,
`train`, `param_counts`, `trainable_state_dict` and the optional hooks below.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from .errors import UserError


def make_head(embed_dim: int, num_classes: int) -> nn.Linear:
    """Linear(D, C) initialised as VPT's code does (`MLP.last_layer`): kaiming-normal weight
    (fan-out) and one constant bias for every class. VPT's constant is -log(99); any constant
    gives the same softmax, the same gradients and (with no weight decay on biases) the same
    run, so it is 0 here."""
    head = nn.Linear(embed_dim, num_classes)
    nn.init.kaiming_normal_(head.weight, a=0, mode="fan_out")
    nn.init.zeros_(head.bias)
    return head


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def check_cls_vit(backbone: nn.Module, method: str) -> None:
    """Refuse, with the reason, a backbone whose token sequence `method` cannot work on: it
    needs timm's VisionTransformer with one CLS token (no register or distillation tokens), read
    out by CLS pooling."""
    if not isinstance(backbone, VisionTransformer):
        raise UserError(f"{method} needs a timm VisionTransformer backbone, got {type(backbone).__name__}")
    if backbone.cls_token is None or backbone.num_prefix_tokens != 1:
        raise UserError(f"{method} needs a ViT with exactly one class token and no register or "
                        f"distillation tokens; this one has {backbone.num_prefix_tokens} prefix tokens")
    if backbone.global_pool != "token":
        raise UserError(f"{method} reads the CLS token; this ViT pools with {backbone.global_pool!r}")
    if getattr(backbone, "attn_pool", None) is not None:
        raise UserError(f"{method} cannot use a ViT with attention pooling")


class PeftModel(nn.Module):
    """backbone -> method features -> head.

    `frozen_backbone=True` keeps the backbone in eval mode even while the model trains, as the
    papers do: a frozen network's dropout and stochastic depth stay off.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, frozen_backbone: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen_backbone = frozen_backbone

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # timm with num_classes=0: the pooled, normed pre-logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> "PeftModel":
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def param_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        head = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        return {"trainable_params": trainable, "trainable_params_no_head": trainable - head,
                "total_params": sum(p.numel() for p in self.parameters())}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what the method trains: all a checkpoint of this run needs beside the backbone.
        A backbone that trains in train mode also updates its buffers (batch-norm statistics),
        so they belong to the trained state too."""
        return {k: v.detach().clone() for k, v in self.state_dict(keep_vars=True).items()
                if k in self.trained_state_names()}

    def trained_state_names(self) -> set[str]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        if not self.frozen_backbone:
            names |= {f"backbone.{n}" for n, _ in self.backbone.named_buffers()}
        return names

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = self.load_state_dict(state, strict=False)
        if missing.unexpected_keys:
            raise KeyError(f"unexpected keys in trainable state: {missing.unexpected_keys}")

    def extra_state(self) -> dict[str, Any]:
        """Training state outside the trainable parameters (e.g. pruning masks), for checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned when a checkpointed run resumes."""

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on matrices and embeddings, none on 1-D parameters (biases, norms)."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    # Optional hooks; methods override what they need.
    def regularization(self) -> torch.Tensor | None:
        """An extra loss term added to the task loss at every step (e.g. LION's pruning pull)."""
        return None

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step (e.g. to project weights or re-apply a mask)."""

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Called after each training epoch (0-based) with the total number of epochs."""

    def epoch_metrics(self) -> dict[str, Any]:
        """Method-specific figures for the epoch's entry of the training curve (e.g. a pruning
        phase), read after `on_epoch_end`."""
        return {}

    def merged(self) -> "PeftModel | None":
        """A copy with the method's trained update folded into the backbone's own weights, so the
        deployed model costs exactly the backbone and the head; None where the method cannot be
        merged (the default)."""
        return None

    def run_metrics(self) -> dict[str, float]:
        """Method-specific figures for the run record (e.g. solver iterations)."""
        return {}


def warmup_cosine_per_epoch(epoch: int, warmup_epochs: int, epochs: int, start: float = 0.0,
                            floor: float = 0.0) -> float:
    """Learning-rate factor of 0-based `epoch`, for a schedule stepped once after every epoch:
    a staircase warmup from `start` (VPT's code: 0, so its first epoch does not move the
    weights), then a half cosine from 1 down to `floor` over the remaining epochs (timm's
    `CosineLRScheduler` as the AdamW-recipe papers ran it: from 1e-6 and down to 1e-5 of 1e-3)."""
    if epoch < warmup_epochs:
        return start + (1.0 - start) * epoch / max(1, warmup_epochs)
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return floor + (1.0 - floor) * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warmup from ~0 to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
