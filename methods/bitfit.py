"""BitFit (Ben Zaken et al., "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022): every bias of the backbone trains,
LayerNorm biases included, and the head; nothing is added.

As VPT's `tinytl-bias` transfer type (VPT Table 1's "Bias" row) and PETL_Vision's `bitfit`:
every parameter named `*.bias`. ViT-B/16: 102,912 + head. Works on any timm classifier (a
ResNet's are its batch-norm biases). Recipe: the AdamW recipe of `bench/recipes.py` (VPT's "Bias"
row was run with VPT's SGD grid instead; PETL_Vision's AdamW rerun gets 9 points more).
"""

from bench.method import register_method
from bench.model import PeftModel, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID


def trainable_params(backbone, num_classes, hparams) -> int:
    biases = sum(p.numel() for n, p in backbone.named_parameters() if n.endswith(".bias"))
    return biases + backbone.num_features * num_classes + num_classes


@register_method(
    "bitfit",
    defaults=ADAMW,
    summary="every bias of the backbone (LayerNorm biases included) and the head",
    paper="Ben Zaken et al., BitFit, ACL 2022; VPT's 'Bias' row; PETL_Vision's AdamW rerun",
    formula=trainable_params,
    grid=ADAMW_GRID,
    identity_at_init=True,
    backbones="any",
)
def build(backbone, num_classes, hparams):
    """Train every bias of the backbone and a new head."""
    freeze(backbone)
    for name, p in backbone.named_parameters():
        if name.endswith(".bias"):
            p.requires_grad_(True)
    return PeftModel(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
