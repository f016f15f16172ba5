"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022), on the
fused `attn.qkv` of every block of a frozen ViT, as the vision PEFT tables ran it.

Definition (held by tests/test_lora_ssf.py and the contract test):
- `targets="qv"` (default, Hu et al.): rank-r updates of the q and v rows of `qkv`:
  out[q] += s * B_q A_q drop(x), out[v] += s * B_v A_v drop(x); the k rows stay the frozen ones.
- `targets="qkv"` (NOAH's code, which the canonical "LoRA 0.29M" VTAB row comes from, and
  PETL_Vision's): one A (D -> r) and one B (r -> 3D) for all of q, k and v.
- A: nn.Linear's default init (kaiming-uniform, a = sqrt 5), B: zero, so LoRA starts as the
  backbone. s = `scale` = alpha / r, 1 by default (alpha = r, as every vision source ran it).
  Dropout `dropout` (0.1, NOAH) on the input of A.
- Trainable: 12 * 4 * D * r for either target set (ViT-B/16, r = 8: 294,912) + head.
- Mergeable: W_qkv[rows] += s * B A after training, exactly.
Recipe: the AdamW recipe of `bench/recipes.py` (NOAH's); tune grid lr x weight decay x r.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench.method import Setting, register_method
from bench.model import PeftModel, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID
from bench.targets import OutputHook, fused_qkv, remove_hooks


class QKVDelta(nn.Module):
    """The low-rank update of one block's qkv output."""

    def __init__(self, dim: int, r: int, targets: str, scale: float, dropout: float):
        super().__init__()
        self.dim, self.targets, self.scale = dim, targets, scale
        self.drop = nn.Dropout(dropout)
        if targets == "qv":
            self.A = nn.ModuleDict({"q": nn.Linear(dim, r, bias=False), "v": nn.Linear(dim, r, bias=False)})
            self.B = nn.ModuleDict({"q": nn.Linear(r, dim, bias=False), "v": nn.Linear(r, dim, bias=False)})
        else:
            self.A = nn.ModuleDict({"qkv": nn.Linear(dim, r, bias=False)})
            self.B = nn.ModuleDict({"qkv": nn.Linear(r, 3 * dim, bias=False)})
        for b in self.B.values():
            nn.init.zeros_(b.weight)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        if self.targets == "qkv":
            return out + self.scale * self.B["qkv"](self.A["qkv"](x)).to(out.dtype)
        d = self.dim
        dq = self.scale * self.B["q"](self.A["q"](x)).to(out.dtype)
        dv = self.scale * self.B["v"](self.A["v"](x)).to(out.dtype)
        return torch.cat([out[..., :d] + dq, out[..., d:2 * d], out[..., 2 * d:] + dv], dim=-1)

    def delta_weight(self) -> torch.Tensor:
        """The update as a (3D, D) matrix to add to qkv's weight."""
        if self.targets == "qkv":
            return self.scale * self.B["qkv"].weight @ self.A["qkv"].weight
        d = self.dim
        w = self.A["q"].weight.new_zeros(3 * d, d)
        w[:d] = self.scale * self.B["q"].weight @ self.A["q"].weight
        w[2 * d:] = self.scale * self.B["v"].weight @ self.A["v"].weight
        return w


class LoRAModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        qkvs = fused_qkv(backbone, "lora")
        freeze(backbone)
        # the backbone stays in train mode while training: its drop-path is part of the recipe
        super().__init__(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
        self.deltas = nn.ModuleList(QKVDelta(q.in_features, hp["r"], hp["targets"], hp["scale"], hp["dropout"])
                                    for q in qkvs)
        for qkv, delta in zip(qkvs, self.deltas):
            qkv.register_forward_hook(OutputHook(delta))

    def merged(self) -> PeftModel:
        model = copy.deepcopy(self)
        qkvs = fused_qkv(model.backbone, "lora")
        with torch.no_grad():
            for qkv, delta in zip(qkvs, model.deltas):
                qkv.weight += delta.delta_weight().to(qkv.weight.dtype)
        remove_hooks(model.backbone)
        return PeftModel(model.backbone, model.head, frozen_backbone=True)


def trainable_params(backbone, num_classes, hp) -> int:
    d, r = backbone.embed_dim, hp["r"]
    per_block = 2 * (d * r + r * d) if hp["targets"] == "qv" else d * r + r * 3 * d
    return len(backbone.blocks) * per_block + backbone.num_features * num_classes + num_classes


@register_method(
    "lora",
    defaults=ADAMW,
    settings={"r": Setting(8, "rank of the update", min=1),
              "targets": Setting("qv", "qv: q and v rows of qkv (Hu et al.); qkv: one update of all three (NOAH)",
                                 choices=("qv", "qkv")),
              "scale": Setting(1.0, "alpha / r (1: alpha = r, as the vision papers ran it)", above=0.0),
              "dropout": Setting(0.1, "dropout on the input of A", min=0.0, below=1.0)},
    summary="rank-r updates of the q and v projections (fused qkv) of every block; frozen ViT",
    paper="Hu et al., LoRA, ICLR 2022; VTAB-1k recipe of NOAH (Zhang et al. 2022)",
    formula=trainable_params,
    grid={**ADAMW_GRID, "r": [1, 8, 16, 32]},
    identity_at_init=True,
)
def build(backbone, num_classes, hparams):
    """LoRA on the q and v rows (or all of q, k, v) of every block's fused qkv."""
    return LoRAModel(backbone, num_classes, hparams)
