"""Fine-tuning modes: LoRA adapters (peft) on the encoder's attention projections, or the whole encoder, both trained
with `rae_hf.trainers.probe_trainer.ProbeTrainer` on a `ProbeClassifier`.

`finetune_param_groups` gives the optimizer its groups: the new head at `head_lr_multiplier` x the learning rate,
backbone block i (of L) at `layer_decay^(L - i)` x, the embeddings at `layer_decay^(L + 1)` x (MAE/BEiT layer-wise
decay), and no weight decay on biases, norms and tokens.

LoRA outputs: `save_finetuned` writes the merged classifier to the output folder and the unmerged adapter (LoRA
weights plus the whole head, BatchNorm running statistics included) to `adapter/`; this reproduces the merged logits:

    model = PeftModel.from_pretrained(lora_base(out), f"{out}/adapter")  # lora_base: rae_hf.probe.finetune
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from torch import nn
from transformers import EvalPrediction

from rae_hf.models.probe import ProbeClassifier
from rae_hf.probe.accuracy import topk_accuracy
from rae_hf.probe.encoders import load_encoder

logger = logging.getLogger(__name__)

__all__ = [
    "apply_lora",
    "classification_metrics",
    "finetune_param_groups",
    "layer_id",
    "lora_base",
    "lora_target_modules",
    "save_finetuned",
    "unfreeze",
]


# Query/value projection names, by preference: transformers 5 names them q_proj/v_proj in DINOv2, DINOv3, ViT,
# ViT-MAE, CLIP and SigLIP; older DINOv2/ViT implementations (and remote code) use query/value.
ATTENTION_PROJECTIONS = (("q_proj", "v_proj"), ("query", "value"))


def lora_target_modules(encoder: nn.Module) -> list[str]:
    """The attention query/value projections of `encoder`, found by name among its linear layers."""
    names = {name.rsplit(".", 1)[-1] for name, module in encoder.named_modules() if isinstance(module, nn.Linear)}
    for pair in ATTENTION_PROJECTIONS:
        if set(pair) <= names:
            return list(pair)
    raise ValueError(
        f"No attention projections named like {ATTENTION_PROJECTIONS} in the encoder (linear layers: {sorted(names)}); "
        "pass --lora_target_modules."
    )


def apply_lora(
    model: ProbeClassifier,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.1,
    target_modules: Sequence[str] | None = None,
) -> PeftModel:
    """Wrap `model` with LoRA adapters on its encoder's attention query/value projections (`lora_target_modules`,
    unless `target_modules` names others). Only the adapters and the head are trained: the linear layer and a
    BatchNorm `head_norm` (its running statistics change in training) are trainable copies (`modules_to_save`), so the
    adapter and its checkpoints carry every weight and statistic training changes (exact resume). peft matches these
    names as suffixes, so an encoder module named `norm` (DINOv3's final LayerNorm) is trained too (a warning)."""
    targets = list(target_modules or lora_target_modules(model.encoder.backbone))
    head = ["classifier"] + (["norm"] if any(True for _ in model.norm.buffers()) else [])
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, modules_to_save=head)
    peft_model = get_peft_model(model, config)
    extra = [name for name, module in peft_model.base_model.model.named_modules()
             if isinstance(module, ModulesToSaveWrapper) and name not in head]  # fmt: skip
    if extra:  # peft matches modules_to_save by name suffix: an encoder's final `norm` (DINOv3) is one
        logger.warning("LoRA also trains %s (named like the head's %s); the adapter keeps them.", extra, head)
    return peft_model


def save_finetuned(model: nn.Module, output_dir: str, base_model_name_or_path: str | None = None) -> nn.Module:
    """Save a fine-tuned classifier to `output_dir`; for a LoRA `PeftModel`, first its unmerged adapter to
    `output_dir/adapter` (its `base_model_name_or_path`: the encoder, see `lora_base`), then the merged model."""
    if isinstance(model, PeftModel):
        for config in model.peft_config.values():
            config.base_model_name_or_path = base_model_name_or_path
        model.save_pretrained(os.path.join(output_dir, "adapter"))
        model = model.merge_and_unload()
    model.save_pretrained(output_dir)
    return model


def lora_base(output_dir: str | os.PathLike, encoder_name_or_path: str | None = None) -> ProbeClassifier:
    """The classifier a saved LoRA adapter (`output_dir/adapter`) applies to: `output_dir`'s config around the
    pretrained encoder's weights (the adapter's `base_model_name_or_path` unless `encoder_name_or_path` is given).
    Its head is fresh: `PeftModel.from_pretrained(lora_base(out), f"{out}/adapter")` loads the trained one."""
    config = ProbeClassifier.config_class.from_pretrained(output_dir)
    if encoder_name_or_path is None:
        encoder_name_or_path = PeftConfig.from_pretrained(os.path.join(output_dir, "adapter")).base_model_name_or_path
    if not encoder_name_or_path:
        raise ValueError(f"{output_dir}/adapter names no base encoder: pass encoder_name_or_path.")
    encoder = load_encoder(encoder_name_or_path, image_size=config.image_size)
    model = ProbeClassifier(config)
    model.encoder.load_state_dict(encoder.state_dict())
    return model.eval()


def unfreeze(model: ProbeClassifier) -> ProbeClassifier:
    """Full fine-tuning: every parameter (encoder and head) trainable."""
    model.requires_grad_(True)
    return model


def classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """`Trainer.compute_metrics`: top-1/top-5 accuracy of the logits (torchmetrics, offline)."""
    logits = torch.as_tensor(prediction.predictions)
    labels = torch.as_tensor(prediction.label_ids)
    return topk_accuracy(logits, labels, num_classes=logits.shape[-1])


_BLOCK = re.compile(r"\.(?:layer|layers|blocks|h)\.(\d+)\.")
_EMBEDDING = ("embeddings", "cls_token", "register_tokens", "mask_token", "position", "patch_embed")
_NO_DECAY = ("cls_token", "register_tokens", "mask_token", "position_embedding", "position_embeddings")


def layer_id(name: str, num_blocks: int) -> int:
    """Depth of a parameter for layer-wise decay: 0 for the embeddings, i + 1 for block i, `num_blocks + 1` for
    everything after the blocks (final norm, pooling head, classifier)."""
    match = _BLOCK.search(name)
    if match is not None:
        return int(match.group(1)) + 1
    if any(part in name for part in _EMBEDDING):
        return 0
    return num_blocks + 1


def finetune_param_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_lr_multiplier: float = 1.0,
    layer_decay: float = 1.0,
) -> list[dict]:
    """Optimizer groups of the trainable parameters of a (LoRA-wrapped) `ProbeClassifier` (see the module doc).
    Each group carries its `lr` and `weight_decay`; the head is any parameter under `classifier`."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    blocks = {int(match.group(1)) for name, _ in named if (match := _BLOCK.search(name))}
    all_blocks = {int(m.group(1)) for name, _ in model.named_parameters() if (m := _BLOCK.search(name))}
    num_blocks = max(all_blocks | blocks, default=-1) + 1
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in named:
        if ".classifier." in f".{name}.":
            scale = head_lr_multiplier
        else:
            scale = layer_decay ** (num_blocks + 1 - layer_id(name, num_blocks))
        decay = 0.0 if param.ndim <= 1 or any(part in name for part in _NO_DECAY) else weight_decay
        groups.setdefault((learning_rate * scale, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]
