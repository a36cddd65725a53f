"""Named protocols (linear mode) and per-mode fine-tuning defaults. timm-style: a preset fills only the arguments the
user did not give; an explicit argument always wins.

Linear protocols (`--protocol`):

- `default`: converged on any dataset size. Full-batch L-BFGS multinomial logistic regression on cached,
  standardized features, with a sweep of the L2 strength (`--l2_grid`); the strength and the feature variant are
  selected on a stratified held-out part of train (`--holdout_fraction`), never on validation; the selected head is
  refit on all of train. With `--head_solver sgd` the minibatch grid (on BatchNorm-standardized features, learning
  rates up to 5) runs at least `--min_head_steps` steps.
- `dinov2`: the DINOv2 paper's grid (13 learning rates 1e-5 ... 0.1, SGD momentum 0.9, N(0, 0.01) init, weight decay
  0, cosine, 10 epochs, lr x batch/256), best head picked on validation. Paper-comparable on ImageNet; on small data
  its heads stop far from convergence (the report then warns).
- `mae`: MAE's linear probe (BatchNorm1d without affine, eps 1e-6, trunc-normal 0.01 init, LARS, base lr 0.1, batch
  16384, 90 epochs with 10 warm-up), best head on validation.

Fine-tuning defaults (`--mode lora` / `--mode full`, any protocol): AdamW with a cosine schedule and a 10% warm-up,
batch 64, a higher learning rate for the new head than for the backbone (`--head_lr_multiplier`), at least
`--min_finetune_steps` optimizer steps whatever the epochs give; `full` adds layer-wise learning-rate decay
(`--layer_decay`, MAE/BEiT fine-tuning) and weight decay 0.05.
"""

from __future__ import annotations

from typing import Any

from rae_hf.probe.heads import DINOV2_LEARNING_RATES

__all__ = ["FINETUNE_DEFAULTS", "LINEAR_PROTOCOLS", "MODES", "PROTOCOLS", "preset"]

PROTOCOLS = ("default", "dinov2", "mae")
MODES = ("linear", "knn", "lora", "full")

_DINOV2: dict[str, Any] = {
    "head_solver": "sgd",
    "selection": "validation",
    "learning_rates": list(DINOV2_LEARNING_RATES),
    "head_optimizer": "sgd",
    "head_momentum": 0.9,
    "head_norm": "none",
    "head_init": "normal",
    "head_init_std": 0.01,
    "head_warmup_epochs": 0.0,
    "scale_lr_by_batch": True,
    "min_head_steps": 0,
    "num_train_epochs": 10.0,
    "per_device_train_batch_size": 256,
}

LINEAR_PROTOCOLS: dict[str, dict[str, Any]] = {
    # L-BFGS by default; the SGD settings apply with --head_solver sgd: DINOv2's grid extended to higher rates, run
    # long enough, on standardized features (BatchNorm without affine, as MAE): raw features are badly conditioned
    # for SGD (on the digits set of the README: 52.7% raw vs 83.7% standardized, 91.3% with L-BFGS).
    "default": _DINOV2
    | {
        "head_solver": "lbfgs",
        "selection": "holdout",
        "learning_rates": [*DINOV2_LEARNING_RATES, 0.2, 0.5, 1.0, 2.0, 5.0],
        "head_norm": "batchnorm",
        "min_head_steps": 2000,
    },
    "dinov2": _DINOV2,
    "mae": _DINOV2
    | {
        "learning_rates": [0.1],
        "head_optimizer": "lars",
        "head_norm": "batchnorm",
        "head_init": "trunc_normal",
        "head_warmup_epochs": 10.0,
        "num_train_epochs": 90.0,
        "per_device_train_batch_size": 16384,
    },
}

_FINETUNE: dict[str, Any] = {
    "learning_rate": 1e-3,
    "head_lr_multiplier": 10.0,
    "layer_decay": 1.0,
    "warmup_steps": 0.1,  # < 1: a fraction of the total steps
    "lr_scheduler_type": "cosine",
    "per_device_train_batch_size": 64,
    "num_train_epochs": 10.0,
    "min_finetune_steps": 1000,
    "weight_decay": 0.01,
}

FINETUNE_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": _FINETUNE,
    "full": _FINETUNE | {"learning_rate": 2e-4, "layer_decay": 0.75, "weight_decay": 0.05},
}


def preset(mode: str, protocol: str) -> dict[str, Any]:
    """The defaults a run in `mode` under `protocol` takes for the arguments it was not given."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}.")
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    if mode in FINETUNE_DEFAULTS:
        return dict(FINETUNE_DEFAULTS[mode])
    return dict(LINEAR_PROTOCOLS[protocol])
