"""Full fine-tuning: every backbone parameter and the head train, with AdamW.

The upper-cost reference of every PEFT table (e.g. Jia et al., "Visual Prompt Tuning", ECCV 2022,
Table 1 "Full"): weight decay on all but biases and norms, the backbone in train mode.
"""

from bench.model import PeftModel, make_head
from bench.method import register_method


def trainable_params(backbone, num_classes, hparams) -> int:
    """The formula the contract tests hold this method to: backbone plus head."""
    return sum(p.numel() for p in backbone.parameters()) + backbone.num_features * num_classes + num_classes


@register_method(
    "full",
    # VPT's full fine-tuning recipe (configs/finetune): AdamW, weight decay 0.01, batch 384, 5 warmup
    # epochs, the schedule stepped per epoch
    defaults={"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.01, "batch_size": 384, "warmup_epochs": 5,
              "lr_schedule": "epoch"},
    summary="every parameter trainable (AdamW)",
    paper="Jia et al., Visual Prompt Tuning, ECCV 2022 (baseline)",
    formula=trainable_params,
    grid={"lr": [1e-3, 5e-4, 1e-4, 5e-3], "weight_decay": [0.01]},
    identity_at_init=True,
    backbones="any",
)
def build(backbone, num_classes, hparams):
    """Fine-tune the whole backbone and a new linear head."""
    for p in backbone.parameters():
        p.requires_grad_(True)
    return PeftModel(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)

