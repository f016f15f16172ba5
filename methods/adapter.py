"""The bottleneck adapter as NOAH ran it for its VTAB-1k "Adapter" row (Zhang et al., "Neural
Prompt Search", 2022, after Houlsby et al. 2019 and Pfeiffer et al. 2020): one adapter per block,
after the MLP branch, on a frozen ViT.

Definition (NOAH's `AdapterSuper` on the MLP output, before the residual add):
h = mlp(norm2(x)); x = x + h + up(drop(QuickGELU(down(h)))); down Linear(D, d) and up Linear(d, D)
with biases, both weights xavier-uniform, biases N(0, 1e-6), dropout 0.1. Not the identity at
init (up is not zero). Trainable: L * (2 D d + d + D) (ViT-B/16, d = 8: 156,768) + head.
Where we differ: NOAH adds the adapter after the block's drop-path; a hook on `mlp` adds it
before, so one drop-path mask covers both. Recipe: the AdamW recipe of `bench/recipes.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.method import Setting, register_method
from bench.model import PeftModel, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID
from bench.targets import OutputHook, block_modules


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(nn.Module):
    """out + up(drop(act(down(out))))."""

    def __init__(self, dim: int, width: int, dropout: float):
        super().__init__()
        self.down, self.up = nn.Linear(dim, width), nn.Linear(width, dim)
        self.act, self.drop = QuickGELU(), nn.Dropout(dropout)
        for layer in (self.down, self.up):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.up(self.drop(self.act(self.down(out)))).to(out.dtype)


class AdapterModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        mlps = block_modules(backbone, "mlp", "adapter", nn.Module)
        freeze(backbone)
        super().__init__(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
        self.adapters = nn.ModuleList(Bottleneck(backbone.embed_dim, hp["dim"], hp["dropout"]) for _ in mlps)
        for mlp, adapter in zip(mlps, self.adapters):
            mlp.register_forward_hook(OutputHook(adapter))


def trainable_params(backbone, num_classes, hp) -> int:
    d, w = backbone.embed_dim, hp["dim"]
    return len(backbone.blocks) * (2 * d * w + w + d) + backbone.num_features * num_classes + num_classes


@register_method(
    "adapter",
    defaults=ADAMW,
    settings={"dim": Setting(8, "bottleneck width", min=1),
              "dropout": Setting(0.1, "dropout inside the adapter", min=0.0, below=1.0)},
    summary="a bottleneck adapter after each block's MLP (NOAH's VTAB-1k adapter); frozen ViT",
    paper="Houlsby et al. 2019 / Pfeiffer et al. 2020, as NOAH (Zhang et al. 2022) ran it",
    formula=trainable_params,
    grid=ADAMW_GRID,
)
def build(backbone, num_classes, hparams):
    """NOAH's adapter after the MLP of every block."""
    return AdapterModel(backbone, num_classes, hparams)
