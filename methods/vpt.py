"""Visual Prompt Tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022), shallow and deep.

Definition (held by tests/test_vpt.py against a reference written from this text):
- Sequence `[CLS, P_1..P_p, patch_1..patch_N]`: prompts go after CLS and before the patch tokens,
  after the position embedding was added (prompts get no position embedding).
- Shallow: one set of p prompts before block 1. Deep: a fresh set for every block; before block
  i > 1 the p prompt slots of the previous block's output are replaced (not added to) by block
  i's prompts. The head reads the CLS token after the final norm.
- Init: U(-v, v), v = sqrt(6 / (3 * patch_h * patch_w + D)) (0.0625 for ViT-B/16). Prompt
  dropout 0.1 (deep) or 0.0 (shallow). The frozen backbone stays in eval mode.
- Trainable: shallow p*D + head; deep L*p*D + head (ViT-B/16: 9,216 p + head).

The backbone is timm's own VisionTransformer, driven block by block: nothing is copied from it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from bench.model import PeftModel, check_cls_vit, freeze, make_head
from bench.method import Setting, register_method

# VPT's grid (Jia et al. 2022, Appendix): base lr for a batch of 256, weight decay.
VPT_GRID = {"lr": [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05],
            "weight_decay": [0.01, 0.001, 0.0001, 0.0]}


def prompt_init_bound(backbone: VisionTransformer) -> float:
    ph, pw = backbone.patch_embed.patch_size
    return math.sqrt(6.0 / float(3 * ph * pw + backbone.embed_dim))


class VPTModel(PeftModel):
    def __init__(self, backbone: VisionTransformer, num_classes: int, prompt_length: int,
                 deep: bool, dropout: float):
        check_cls_vit(backbone, "vpt-deep" if deep else "vpt-shallow")
        freeze(backbone)
        super().__init__(backbone, make_head(backbone.embed_dim, num_classes), frozen_backbone=True)
        self.deep = deep
        self.prompt_length = prompt_length
        n_sets = len(backbone.blocks) if deep else 1
        bound = prompt_init_bound(backbone)
        self.prompts = nn.Parameter(torch.empty(n_sets, prompt_length, backbone.embed_dim).uniform_(-bound, bound))
        self.prompt_dropout = nn.Dropout(dropout)
        # The prompts go in through forward pre-hooks on the blocks: the ViT runs its own forward
        # (patch and position embedding, blocks, norm, CLS pooling), nothing of it copied here.
        for i, block in enumerate(backbone.blocks):
            if i == 0 or deep:
                block.register_forward_pre_hook(_PromptHook(self, i))

    def with_prompts(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """The tokens entering `block` with its prompts after CLS: inserted before the first
        block, replacing the previous block's prompt outputs before the others."""
        p = self.prompt_length
        prompts = self.prompt_dropout(self.prompts[block if self.deep else 0]).expand(x.shape[0], -1, -1)
        rest = x[:, 1:] if block == 0 else x[:, 1 + p:]
        return torch.cat([x[:, :1], prompts.to(x.dtype), rest], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # timm with num_classes=0: the CLS token after the final norm


class _PromptHook:
    """Forward pre-hook of block `index`: its input with the prompts in place (a plain object, so
    the model is not registered as a submodule of its own backbone)."""

    def __init__(self, model: VPTModel, index: int):
        self.model, self.index = model, index

    def __call__(self, module, args):
        return (self.model.with_prompts(args[0], self.index), *args[1:])


def _formula(deep: bool):
    def trainable_params(backbone, num_classes, hparams) -> int:
        sets = len(backbone.blocks) if deep else 1
        return sets * hparams["prompt_length"] * backbone.embed_dim + backbone.embed_dim * num_classes + num_classes
    return trainable_params


# VPT's prompt recipe (configs/prompt): SGD, batch 128, 10 warmup epochs of 100, the schedule
# stepped once per epoch
COMMON = {"optimizer": "sgd", "lr": 1.0, "weight_decay": 0.0001, "batch_size": 128, "lr_schedule": "epoch"}


def _settings(dropout: float) -> dict[str, Setting]:
    return {"prompt_length": Setting(10, "prompt tokens per set (p)", min=1),
            "prompt_dropout": Setting(dropout, "dropout on the prompts", min=0.0, below=1.0)}


@register_method(
    "vpt-shallow",
    defaults=COMMON,
    settings=_settings(0.0),
    summary="p prompt tokens after CLS before block 1; frozen ViT; linear head",
    paper="Jia et al., Visual Prompt Tuning, ECCV 2022",
    formula=_formula(deep=False),
    grid=VPT_GRID,
)
def build_shallow(backbone, num_classes, hparams):
    """VPT-shallow: one set of prompts before the first block."""
    return VPTModel(backbone, num_classes, hparams["prompt_length"], deep=False,
                    dropout=hparams["prompt_dropout"])


@register_method(
    "vpt-deep",
    aliases=("vpt",),
    defaults=COMMON,
    settings=_settings(0.1),
    summary="a fresh set of p prompt tokens before every block; frozen ViT; linear head",
    paper="Jia et al., Visual Prompt Tuning, ECCV 2022",
    formula=_formula(deep=True),
    grid=VPT_GRID,
)
def build_deep(backbone, num_classes, hparams):
    """VPT-deep: prompts before every block, replacing the previous block's prompt outputs."""
    return VPTModel(backbone, num_classes, hparams["prompt_length"], deep=True,
                    dropout=hparams["prompt_dropout"])
