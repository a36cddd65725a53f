"""The linear probe on cached features: solve (L-BFGS sweep or SGD grid), select (held-out part of train or
validation), evaluate, diagnose.

`linear_probe` returns a `LinearProbeResult`: one row per (feature variant, l2 or learning rate) with its
accuracies, the selected head (validation top-1 with its 95% interval), the weights to save and the warnings of
`rae_hf.probe.diagnostics`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rae_hf.probe.accuracy import topk_accuracy
from rae_hf.probe.diagnostics import (
    ProbeWarning,
    edge_of_grid,
    loss_drop_last_tenth,
    not_converged,
    small_validation,
    wilson_interval,
)
from rae_hf.probe.features import CachedFeatureSource, FeatureSet, FeatureVariant
from rae_hf.probe.heads import LinearHeadGrid, evaluate_heads, full_batch_gradient_norms, train_heads
from rae_hf.probe.logistic import LogisticFit, Standardizer, fit_logistic_regression, holdout_split, sweep_l2

__all__ = ["LinearProbeResult", "linear_probe", "select_row"]

logger = logging.getLogger(__name__)


@dataclass
class LinearProbeResult:
    """Rows of every head, the selected one (`best`, None when every head diverged), its weights on raw features
    (`weight`, `bias`, and the BatchNorm state of a `batchnorm` head), how training went and the warnings."""

    rows: list[dict]
    best: dict | None
    training: dict
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    norm_state: dict | None = None
    warnings: list[ProbeWarning] = field(default_factory=list)


def select_row(rows: Sequence[dict], key: str, parameter: str) -> dict | None:
    """The row with the highest `key` (the lowest for a `*_loss` key; then top-5 on validation for ties when `key`
    is `top1`; then the strongest regularization / lowest learning rate), diverged rows excluded.

    The L-BFGS sweep selects on the held-out cross-entropy: on a small held-out part accuracy moves in steps of
    1/size and ties often; the loss is smooth and picks the same optimum on large sets."""
    candidates = [row for row in rows if not row.get("diverged") and row.get(key) is not None]
    if not candidates:
        return None
    sign = -1.0 if key.endswith("_loss") else 1.0
    regularity = (lambda row: row[parameter]) if parameter == "l2" else (lambda row: -row[parameter])
    secondary = (lambda row: row["top5"]) if key == "top1" else (lambda row: 0.0)
    return max(candidates, key=lambda row: (sign * row[key], secondary(row), regularity(row)))


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    return topk_accuracy(logits, labels.to(logits.device), num_classes)


def _logits(fit: LogisticFit, features: torch.Tensor, standardizer: Standardizer, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fit.logits(features[i : i + chunk], standardizer) for i in range(0, len(features), chunk)])


def _lbfgs(
    train: FeatureSet,
    validation: FeatureSet,
    variants: Sequence[FeatureVariant],
    num_classes: int,
    args,
    device: torch.device,
    split: tuple[torch.Tensor, torch.Tensor] | None,
) -> LinearProbeResult:
    """Sweep l2 per variant on the fit part, select on the held-out part (or validation), refit on all of train."""
    options = {"max_iter": args.lbfgs_max_iter, "tolerance": args.lbfgs_tolerance, "chunk_size": args.lbfgs_chunk_size}
    chunk = args.lbfgs_chunk_size
    train_labels, validation_labels = train.labels.to(device), validation.labels.to(device)
    rows, finals = [], {}
    for variant in variants:
        features = train.variant(variant).to(device)
        validation_features = validation.variant(variant).to(device)
        fit_features, fit_labels = features, train_labels
        if split is not None:
            fit_features, fit_labels = features[split[0].to(device)], train_labels[split[0].to(device)]
        standardizer = Standardizer.fit(fit_features, chunk)
        fits = sweep_l2(fit_features, fit_labels, num_classes, args.l2_grid, standardizer, **options)
        for fit in fits:
            row = {"feature": variant.name, "solver": "lbfgs", "l2": fit.l2}
            if split is not None:
                logits = _logits(fit, features[split[1].to(device)], standardizer, chunk)
                held_labels = train_labels[split[1].to(device)]
                row["holdout_top1"] = _accuracy(logits, held_labels, num_classes)["top1"]
                row["holdout_loss"] = torch.nn.functional.cross_entropy(logits, held_labels).item()
            row |= _accuracy(_logits(fit, validation_features, standardizer, chunk), validation_labels, num_classes)
            row |= {"train_loss": fit.train_loss, "iterations": fit.iterations, "converged": fit.converged}
            row["diverged"] = not math.isfinite(fit.loss)
            rows.append(row)
        key = "holdout_loss" if split is not None else "top1"
        chosen = select_row([row for row in rows if row["feature"] == variant.name], key, "l2")
        if chosen is None:
            continue
        fit = fits[[f.l2 for f in fits].index(chosen["l2"])]
        if split is not None:  # refit on all of train at the selected strength, from the fit part's solution
            standardizer = Standardizer.fit(features, chunk)
            fit = fit_logistic_regression(
                features, train_labels, num_classes, fit.l2, standardizer, init=(fit.weight, fit.bias), **options
            )
        accuracy = _accuracy(_logits(fit, validation_features, standardizer, chunk), validation_labels, num_classes)
        finals[variant.name] = (chosen, fit, standardizer, accuracy)

    chosen = select_row([entry[0] for entry in finals.values()], key, "l2")
    training = {"solver": "lbfgs", "l2_grid": list(args.l2_grid), "max_iter": args.lbfgs_max_iter}
    if chosen is None:
        return LinearProbeResult(rows, None, training)
    _, fit, standardizer, accuracy = finals[chosen["feature"]]
    best = {
        "feature": chosen["feature"],
        "solver": "lbfgs",
        "l2": fit.l2,
        **accuracy,
        "holdout_top1": chosen.get("holdout_top1"),
        "holdout_loss": chosen.get("holdout_loss"),
        "train_loss": fit.train_loss,
        "iterations": fit.iterations,
        "converged": fit.converged,
        "grad_norm": fit.grad_norm,
    }
    weight, bias = standardizer.fold(fit.weight, fit.bias)
    warnings = [
        edge_of_grid("l2 regularization", args.l2_grid, fit.l2, f"feature {chosen['feature']}"),
        not_converged(
            "L-BFGS solve",
            hit_iteration_limit=not fit.converged,
            advice="raise --lbfgs_max_iter (or --lbfgs_tolerance)",
        ),
    ]
    result = LinearProbeResult(rows, best, training, weight.cpu(), bias.cpu())
    result.warnings = [w for w in warnings if w is not None]
    return result


def _sgd(
    train: FeatureSet,
    validation: FeatureSet,
    variants: Sequence[FeatureVariant],
    variant_dims: dict[str, int],
    num_classes: int,
    args,
    device: torch.device,
    split: tuple[torch.Tensor, torch.Tensor] | None,
) -> LinearProbeResult:
    """The minibatch grid (every learning rate x variant in one pass), selected on the held-out part or validation."""
    heads = LinearHeadGrid(
        variant_dims,
        args.learning_rates,
        num_classes,
        batchnorm=args.head_norm == "batchnorm",
        init=args.head_init,
        init_std=args.head_init_std,
        seed=args.seed,
    )
    initial = copy.deepcopy(heads)
    fit_set = train.select(split[0]) if split is not None else train
    source = CachedFeatureSource(fit_set, variants, device)
    trained = train_heads(
        heads,
        source,
        num_epochs=args.num_train_epochs,
        batch_size=args.per_device_train_batch_size,
        device=device,
        optimizer=args.head_optimizer,
        momentum=args.head_momentum,
        weight_decay=args.weight_decay,
        warmup_epochs=args.head_warmup_epochs,
        scale_lr_by_batch=args.scale_lr_by_batch,
        max_steps=args.max_steps,
        min_steps=args.min_head_steps,
        seed=args.seed,
        progress=not args.disable_tqdm,
    )
    eval_batch = args.per_device_eval_batch_size
    accuracies = evaluate_heads(heads, CachedFeatureSource(validation, variants, device), eval_batch, device)
    holdout = [None] * len(heads.specs)
    if split is not None:
        holdout_source = CachedFeatureSource(train.select(split[1]), variants, device)
        holdout = [entry["top1"] for entry in evaluate_heads(heads, holdout_source, eval_batch, device)]
    rows = []
    for spec, accuracy, loss, held in zip(heads.specs, accuracies, trained.train_loss, holdout, strict=True):
        row = {"feature": spec.variant, "solver": "sgd", "base_learning_rate": spec.learning_rate}
        row["learning_rate"] = spec.learning_rate * trained.lr_scale
        if split is not None:
            row["holdout_top1"] = held
        finite = math.isfinite(loss)
        rows.append(row | accuracy | {"train_loss": loss if finite else None, "diverged": not finite})
    training = {
        "solver": "sgd",
        "optimizer": args.head_optimizer,
        "steps": trained.steps,
        "epochs": trained.epochs,
        "batch_size": trained.batch_size,
        "lr_scale": trained.lr_scale,
        "head_norm": args.head_norm,
    }
    best = select_row(rows, "holdout_top1" if split is not None else "top1", "base_learning_rate")
    if best is None:
        return LinearProbeResult(rows, None, training)
    index = rows.index(best)
    # a stationary point has a zero full-batch gradient: compare the end with the start (same normalization)
    initial.norms.load_state_dict(heads.norms.state_dict())
    final_norms = full_batch_gradient_norms(heads, source, eval_batch, device)
    initial_norms = full_batch_gradient_norms(initial, source, eval_batch, device)
    gradient_ratio = (final_norms[index] / initial_norms[index].clamp_min(1e-12)).item()
    loss_drop = loss_drop_last_tenth(trained.loss_history)[index].item()
    best = best | {"loss_drop_last_tenth": loss_drop, "gradient_ratio": gradient_ratio}
    rows[index] = best
    rates = [row["base_learning_rate"] for row in rows if row["feature"] == best["feature"]]
    warnings = [
        edge_of_grid("learning rate", rates, best["base_learning_rate"], f"feature {best['feature']}"),
        not_converged(
            f"selected head ({best['feature']}, lr {best['base_learning_rate']:g})",
            loss_drop=loss_drop,
            gradient_ratio=gradient_ratio,
        ),
    ]
    head = heads.heads[index]
    result = LinearProbeResult(
        rows,
        best,
        training,
        head.weight.detach().cpu(),
        head.bias.detach().cpu(),
        {k: v.cpu() for k, v in heads.norms[best["feature"]].state_dict().items()},
    )
    result.warnings = [w for w in warnings if w is not None]
    return result


def linear_probe(
    train: FeatureSet,
    validation: FeatureSet,
    variants: Sequence[FeatureVariant],
    variant_dims: dict[str, int],
    num_classes: int,
    args,
    device: torch.device | str = "cpu",
) -> LinearProbeResult:
    """Fit, select and diagnose the linear heads of `args` (`ProbeTrainingArguments` after `resolve_defaults`)."""
    device = torch.device(device)
    split = None
    if args.selection == "holdout":
        split = holdout_split(train.labels, args.holdout_fraction, args.seed)
        if split[1].numel() == 0:
            raise ValueError(
                "--selection holdout needs at least 2 training examples of some class; use --selection validation."
            )
    if args.head_solver == "lbfgs":
        result = _lbfgs(train, validation, variants, num_classes, args, device, split)
    else:
        result = _sgd(train, validation, variants, variant_dims, num_classes, args, device, split)
    result.training |= {"protocol": args.protocol, "selection": args.selection}
    if split is not None:
        result.training |= {"holdout_fraction": args.holdout_fraction, "num_fit": len(split[0]),
                            "num_holdout": len(split[1])}  # fmt: skip
    if result.best is not None:
        result.best["top1_ci95"] = list(wilson_interval(result.best["top1"], len(validation)))
        warning = small_validation(result.best["top1"], len(validation))
        if warning is not None:
            result.warnings.append(warning)
    return result
