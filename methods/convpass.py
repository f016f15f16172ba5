"""Convpass (Jie and Deng, "Convolutional Bypasses Are Better Vision Transformer Adapters",
2022, arXiv 2207.07039): a small convolutional bypass beside the attention and beside the MLP of
every block of a frozen ViT, so the plain ViT gains the locality of a convolution.

Definition (held by tests/test_comparison_methods.py and the contract test):
- beside `attn` (on norm1's output) and beside `mlp` (on norm2's output):
  x = x + dp(attn(n1) + s C_attn(n1)); x = x + dp(mlp(n2) + s C_mlp(n2));
- C: down Linear(D, h) (xavier weight, bias 0) -> QuickGELU -> the patch tokens as an h-channel
  image on the patch grid -> Conv2d(h, h, 3, padding 1) -> back to tokens (the class token goes
  through the same convolution as a 1 x 1 image, so only the centre tap acts on it) -> QuickGELU
  -> dropout 0.1 -> up Linear(h, D) with weight and bias zero, so Convpass starts as the backbone;
  the convolution starts as the identity (zeros, centre tap 1) or xavier (`conv_init`); h = 8;
- trainable: 2 L (D h + h + 9 h^2 + h + h D + D) (ViT-B/16: 327,552) + head;
- not mergeable: the 3 x 3 convolution mixes neighbouring tokens, which no weight of the ViT does.
Where we differ: the bypass is added to the branch's output by a hook on `attn` and `mlp`, so it
shares the block's drop-path mask (the source draws its own mask per branch) and would pass
through a LayerScale (ViT-B/16 has none). It needs a square patch grid and exactly one class
token; other ViTs are refused with the reason.
Recipe: the AdamW recipe of `bench/recipes.py`. Convpass's configs pick the scale per task (0.01 to
100) on test accuracy; here s is a setting searched on val200 with --protocol vtab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from bench.method import Setting, register_method
from bench.model import PeftModel, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID
from bench.targets import OutputHook, block_modules


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class Bypass(nn.Module):
    def __init__(self, dim: int, hidden: int, scale: float, dropout: float, conv_init: str):
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, hidden)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1)
        if conv_init == "identity":
            nn.init.zeros_(self.conv.weight)
            with torch.no_grad():
                self.conv.weight[:, :, 1, 1] = torch.eye(hidden)
        else:
            nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        side = math.isqrt(n - 1)
        h = quick_gelu(self.down(x))
        patches = h[:, 1:].transpose(1, 2).reshape(b, -1, side, side)
        patches = self.conv(patches).flatten(2).transpose(1, 2)
        cls = self.conv(h[:, :1].transpose(1, 2).reshape(b, -1, 1, 1)).flatten(2).transpose(1, 2)
        h = self.drop(quick_gelu(torch.cat([cls, patches], dim=1)))
        return out + self.scale * self.up(h).to(out.dtype)


class ConvpassModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        attns = block_modules(backbone, "attn", "convpass", nn.Module)
        mlps = block_modules(backbone, "mlp", "convpass", nn.Module)
        grid = tuple(getattr(getattr(backbone, "patch_embed", None), "grid_size", ()) or ())
        prefix = getattr(backbone, "num_prefix_tokens", None)
        if len(grid) != 2 or grid[0] != grid[1]:
            raise UserError(f"convpass convolves the patch tokens as a square image, and this "
                            f"{type(backbone).__name__}'s patch grid is {grid or 'unknown'}; use a square input")
        if prefix != 1 or getattr(backbone, "cls_token", None) is None:
            raise UserError(f"convpass passes exactly one class token through its convolution as a 1 x 1 image; "
                            f"this {type(backbone).__name__} has {prefix} prefix tokens (class and register "
                            "tokens)")
        freeze(backbone)
        # the backbone stays in train mode while training: its drop-path is part of the recipe
        super().__init__(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
        dim = backbone.embed_dim
        self.bypasses = nn.ModuleList()
        for attn, mlp in zip(attns, mlps):
            for branch in (attn, mlp):
                bypass = Bypass(dim, hp["dim"], hp["scale"], hp["dropout"], hp["conv_init"])
                branch.register_forward_hook(OutputHook(bypass))
                self.bypasses.append(bypass)


def trainable_params(backbone, num_classes, hp) -> int:
    d, h = backbone.embed_dim, hp["dim"]
    per_bypass = d * h + h + 9 * h * h + h + h * d + d
    return 2 * len(backbone.blocks) * per_bypass + backbone.num_features * num_classes + num_classes


@register_method(
    "convpass",
    defaults=ADAMW,
    settings={"dim": Setting(8, "channels of the bypass (its convolution's width)", min=1),
              "scale": Setting(1.0, "scale s of the bypass (Convpass's configs: 0.01 to 100 per task)", above=0.0),
              "conv_init": Setting("identity", "the 3x3 convolution's init: identity (zeros, centre tap 1) or xavier",
                                   choices=("identity", "xavier")),
              "dropout": Setting(0.1, "dropout before the up projection", min=0.0, below=1.0)},
    summary="a 3x3-convolutional bypass beside attention and MLP of every block (patch tokens as an image); "
            "frozen ViT",
    paper="Jie and Deng, Convolutional Bypasses Are Better Vision Transformer Adapters, 2022",
    formula=trainable_params,
    grid={**ADAMW_GRID, "scale": [0.1, 1.0, 10.0]},
    identity_at_init=True,
)
def build(backbone, num_classes, hparams):
    """Convpass: convolutional bypasses beside every block's attention and MLP."""
    return ConvpassModel(backbone, num_classes, hparams)
