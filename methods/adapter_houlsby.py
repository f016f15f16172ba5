"""Houlsby adapters (Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML
2019): two adapters per block, after the attention and after the MLP, and the LayerNorms train,
on a frozen ViT.

Definition: out -> out + s * up(GELU(down(out))) on the output of each block's `attn` and `mlp`
(before the residual add); down Linear(D, d), up Linear(d, D), with biases; every LayerNorm of
the backbone (norm1, norm2 of each block, the final norm) trains too. Init `houlsby` (default):
both weights truncated-normal with std 0.01, biases 0 (near the identity, as Adapter+'s
`init: houlsby`); `zero`: down nn.Linear's default, up zero, so the model starts exactly as the
backbone. Trainable: L * 2 * (2 D d + d + D) + LayerNorms (ViT-B/16, d = 8: 313,536 + 38,400)
+ head. Recipe: the AdamW recipe of `bench/recipes.py`; tune grid lr x weight decay x d, as
PETL_Vision searched it.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.method import Setting, register_method
from bench.model import PeftModel, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID
from bench.targets import OutputHook, block_modules


class HoulsbyAdapter(nn.Module):
    def __init__(self, dim: int, width: int, scale: float, init: str):
        super().__init__()
        self.down, self.up = nn.Linear(dim, width), nn.Linear(width, dim)
        self.act, self.scale = nn.GELU(), scale
        if init == "houlsby":
            for layer in (self.down, self.up):
                nn.init.trunc_normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)
        else:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.scale * self.up(self.act(self.down(out))).to(out.dtype)


class HoulsbyModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        attns = block_modules(backbone, "attn", "adapter-houlsby", nn.Module)
        mlps = block_modules(backbone, "mlp", "adapter-houlsby", nn.Module)
        freeze(backbone)
        for module in backbone.modules():
            if isinstance(module, nn.LayerNorm):
                for p in module.parameters():
                    p.requires_grad_(True)
        super().__init__(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
        d = backbone.embed_dim
        self.adapters = nn.ModuleList(HoulsbyAdapter(d, hp["dim"], hp["scale"], hp["init"])
                                      for _ in range(2 * len(attns)))
        for module, adapter in zip([m for pair in zip(attns, mlps) for m in pair], self.adapters):
            module.register_forward_hook(OutputHook(adapter))


def trainable_params(backbone, num_classes, hp) -> int:
    d, w = backbone.embed_dim, hp["dim"]
    norms = sum(p.numel() for m in backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    return len(backbone.blocks) * 2 * (2 * d * w + w + d) + norms + backbone.num_features * num_classes + num_classes


@register_method(
    "adapter-houlsby",
    defaults=ADAMW,
    settings={"dim": Setting(8, "bottleneck width", min=1),
              "scale": Setting(1.0, "scale of the adapter's output", above=0.0),
              "init": Setting("houlsby", "houlsby: weights N(0, 0.01) truncated; zero: up projection 0 "
                              "(exactly the backbone at init)", choices=("houlsby", "zero"))},
    summary="adapters after attention and MLP of every block, LayerNorms trainable; frozen ViT",
    paper="Houlsby et al., Parameter-Efficient Transfer Learning for NLP, ICML 2019",
    formula=trainable_params,
    grid={**ADAMW_GRID, "dim": [4, 8, 16, 32]},
)
def build(backbone, num_classes, hparams):
    """Houlsby's two adapters per block, with trainable LayerNorms."""
    return HoulsbyModel(backbone, num_classes, hparams)
