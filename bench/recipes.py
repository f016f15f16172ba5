"""Training recipes several methods share, as hyperparameter defaults and tune grids.

ADAMW: what LoRA, the adapters, BitFit, SSF and AdaptFormer were published with (NOAH's,
FacT's, Convpass's, RepAdapter's and PETL_Vision's code; `../shared/reference/methods-next.md`):
AdamW, lr 1e-3 for a batch of 64, weight decay 1e-4 (not on 1-D parameters), 100 epochs with 10
of linear warmup from 1e-6 and a cosine down to 1e-5, both stepped once per epoch (timm's
`CosineLRScheduler`), drop-path 0.1 on the frozen backbone kept in train mode. Where we differ:
the sources drop the last partial batch (15 steps of 64 per epoch on 1,000 images), we keep it
(16 steps); timm's cosine runs over all epochs with the warmup laid over its start, ours over the
epochs after the warmup; the head is VPT's (kaiming-normal, constant bias), not timm's
`reset_classifier` (PyTorch's default Linear init).

ADAMW_GRID: the only documented honest grid (PETL_Vision): lr {1e-3, 1e-2} x weight decay
{1e-4, 1e-3}, selected on val200 after the last epoch; methods add their own knob.
"""

ADAMW = {"optimizer": "adamw", "lr": 1e-3, "lr_batch_base": 64, "weight_decay": 1e-4, "epochs": 100,
         "warmup_epochs": 10, "batch_size": 64, "lr_schedule": "epoch", "warmup_start": 1e-3,
         "lr_floor": 1e-2, "drop_path": 0.1}

ADAMW_GRID = {"lr": [1e-3, 1e-2], "weight_decay": [1e-4, 1e-3]}
