"""Linear probe: a frozen backbone and a trained linear head on its CLS feature.

The classic lower bound of every PEFT table (e.g. Jia et al., "Visual Prompt Tuning", ECCV 2022,
Table 1 "Linear"). The backbone stays in eval mode; only Linear(D, C) trains, with SGD.
"""

from bench.model import PeftModel, freeze, make_head
from bench.method import register_method


def trainable_params(backbone, num_classes, hparams) -> int:
    """The formula the contract tests hold this method to: the head alone."""
    return backbone.num_features * num_classes + num_classes


@register_method(
    "linear",
    # VPT's linear-probe recipe (configs/linear): SGD, batch 1024, the schedule stepped per epoch
    defaults={"optimizer": "sgd", "lr": 1.0, "weight_decay": 0.0, "batch_size": 1024, "lr_schedule": "epoch"},
    summary="frozen backbone, linear head on its pooled feature (a ViT: the CLS token after the final norm)",
    paper="Jia et al., Visual Prompt Tuning, ECCV 2022 (baseline)",
    formula=trainable_params,
    # VPT ran the linear probe with its own SGD grid (base lr for a batch of 256, weight decay)
    grid={"lr": [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05],
          "weight_decay": [0.01, 0.001, 0.0001, 0.0]},
    identity_at_init=True,
    backbones="any",
    head_only=True,  # the engine trains the head on features computed once (bench/features.py)
)
def build(backbone, num_classes, hparams):
    """Linear probe on the frozen backbone's CLS feature."""
    freeze(backbone)
    return PeftModel(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=True)

