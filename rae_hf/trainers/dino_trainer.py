"""DINO/DINOv2 self-supervised pretraining with `transformers.Trainer`.

One optimizer step: the teacher (EMA of the student, no gradients) sees the 2 unmasked global crops, the student the
(iBOT-masked) global crops and the local crops; loss = DINO CE + iBOT masked-patch CE + 0.1 KoLeo. After the step the
teacher follows the student with the cosine momentum 0.992 -> 1 (`EMACallback` with `target=teacher`). All
schedules step per optimizer step (DINOv2 "epochs" are `epoch_length` steps). Where things live in a checkpoint:
- `model.safetensors`: student, teacher and heads (`DinoModel`); `optimizer.pt`, `scheduler.pt` (lr and weight
  decay of every parameter group follow from its step), `rng_state*.pth`, `trainer_state.json`: Trainer's own;
- `dino_center.safetensors`, `ibot_center.safetensors`: the centres; `teacher.safetensors`: the teacher EMA state.
The teacher temperature and momentum are functions of the step, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import Trainer

from ..callbacks import EMACallback
from ..hub import COMMON_TRAINING_KEYS, card_model_id, model_card, recipe_rows
from ..losses.dino import DINOLoss, IBOTPatchLoss, koleo_loss
from ..models.dino import DinoModel
from .base_trainer import BaseTrainer, TrainingValues
from .dino_config import DinoTrainingArguments

_BLOCK = re.compile(r"\.(?:layers?|blocks)\.(\d+)\.")
# Parameters before the first block: HF `embeddings.*`, timm-style (rae_hf ViT variants) tokens and patch embedding.
_EMBEDDING_NAMES = ("cls_token", "pos_embed", "mask_token", "register_tokens", "patch_embed")


def cosine_schedule(step: int, base: float, final: float, total: int, warmup: int = 0, start: float = 0.0) -> float:
    """DINO's per-step schedule: `linspace(start, base, warmup)` then cosine from `base` to `final` until `total`,
    then `final`."""
    if step < warmup:
        return start + (base - start) * step / max(warmup - 1, 1)
    if step >= total:
        return final
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def linear_warmup(step: int, start: float, end: float, warmup: int) -> float:
    """`linspace(start, end, warmup)` for the first `warmup` steps, then `end`."""
    if step >= warmup:
        return end
    return start + (end - start) * step / max(warmup - 1, 1)


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a backbone parameter: 0 embeddings (patch, position, CLS/mask/register tokens), i + 1 block i,
    `num_layers + 1` the final norm."""
    if name.startswith("embeddings.") or name.split(".")[0] in _EMBEDDING_NAMES:
        return 0
    match = _BLOCK.search("." + name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def no_weight_decay(name: str) -> bool:
    """Biases, norms and LayerScale (HF `lambda1/2`, timm `gamma`) are not decayed; embeddings and tokens are."""
    return name.endswith(".bias") or "norm" in name or "gamma" in name or ".lambda" in name


def dino_param_groups(model: DinoModel, args: DinoTrainingArguments) -> list[dict]:
    """Student parameters grouped by (lr multiplier, weight-decay multiplier, last layer)."""
    num_layers = model.config.backbone_config.num_hidden_layers
    groups: dict[tuple[float, float, bool], dict] = {}
    for module_name, module in model.student.items():
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            lr_mult = 1.0
            if module_name == "backbone":
                lr_mult = args.layerwise_decay ** (num_layers + 1 - layer_id(name, num_layers))
                if "patch_embed" in name:
                    lr_mult *= args.patch_embed_lr_mult
            key = (lr_mult, 0.0 if no_weight_decay(name) else 1.0, "last_layer" in name)
            group = groups.setdefault(
                key, {"params": [], "lr_multiplier": key[0], "wd_multiplier": key[1], "is_last_layer": key[2]}
            )
            group["params"].append(param)
    return list(groups.values())


class DinoScheduler(LRScheduler):
    """Sets every group's lr (peak schedule x `lr_multiplier`, 0 for the last layer while frozen) and weight decay
    (cosine schedule x `wd_multiplier`) for the optimizer step about to run. Its state is the step count."""

    def __init__(self, optimizer: torch.optim.Optimizer, trainer: DinoTrainer):
        self.trainer = trainer
        super().__init__(optimizer)

    def state_dict(self) -> dict:
        return {key: value for key, value in super().state_dict().items() if key != "trainer"}

    def get_lr(self) -> list[float]:
        step, trainer = self.last_epoch, self.trainer
        lr, weight_decay = trainer.lr_at(step), trainer.weight_decay_at(step)
        frozen = step < trainer.freeze_last_layer_steps
        rates = []
        for group in self.optimizer.param_groups:
            group["weight_decay"] = weight_decay * group["wd_multiplier"]
            rates.append(0.0 if frozen and group["is_last_layer"] else lr * group["lr_multiplier"])
        return rates


class DinoTrainer(BaseTrainer):
    """`Trainer` for `DinoModel` on batches of `rae_hf.data.multicrop.MultiCropCollator`."""

    args: DinoTrainingArguments

    def __init__(self, model: DinoModel, args: DinoTrainingArguments, **kwargs):
        if args.use_ibot and not model.config.use_ibot:
            raise ValueError("method 'dinov2' with ibot_loss_weight > 0 needs a DinoConfig with use_ibot=True.")
        super().__init__(model=model, args=args, **kwargs)
        config = model.config
        self.dino_loss = DINOLoss(config.head_out_dim, args.student_temperature, args.center_momentum).to(args.device)
        self.register_state("dino_center", self.dino_loss)
        self.ibot_loss = None
        if args.use_ibot:
            out_dim = config.ibot_out_dim if config.ibot_separate_head else config.head_out_dim
            self.ibot_loss = IBOTPatchLoss(out_dim, args.student_temperature, args.center_momentum).to(args.device)
            self.register_state("ibot_center", self.ibot_loss)
        else:  # no masks: the mask token would get no gradient (DDP needs every trainable parameter used)
            mask_token = getattr(model.student["backbone"].embeddings, "mask_token", None)
            if mask_token is not None:
                mask_token.requires_grad_(False)
        self.teacher_ema = self.add_ema(
            EMACallback(self.teacher_momentum_at, name="teacher", target=model.teacher, source=model.student)
        )
        self.epoch_steps = args.epoch_length or 1
        self.total_steps = max(args.max_steps, 1)
        self.peak_lr = args.learning_rate

    # ----- schedules --------------------------------------------------------------------------------------------
    def on_training_values(self, values: TrainingValues, sized: bool) -> None:
        self.epoch_steps = self.args.epoch_length or values.num_update_steps_per_epoch
        self.total_steps = values.max_steps
        self.peak_lr = self.args.scaled_learning_rate(values.total_train_batch_size)

    @property
    def freeze_last_layer_steps(self) -> int:
        return round(self.args.freeze_last_layer_epochs * self.epoch_steps)

    def lr_at(self, step: int) -> float:
        """Peak-group lr of optimizer step `step` (0-based): linear warm-up from 0, cosine to `min_lr`."""
        warmup = round(self.args.warmup_epochs * self.epoch_steps)
        return cosine_schedule(step, self.peak_lr, self.args.min_lr, self.total_steps, warmup)

    def weight_decay_at(self, step: int) -> float:
        return cosine_schedule(step, self.args.weight_decay, self.args.weight_decay_end, self.total_steps)

    def teacher_temperature_at(self, step: int) -> float:
        warmup = round(self.args.warmup_teacher_temperature_epochs * self.epoch_steps)
        return linear_warmup(step, self.args.warmup_teacher_temperature, self.args.teacher_temperature, warmup)

    def teacher_momentum_at(self, steps_done: int) -> float:
        """Momentum of the teacher update after optimizer step `steps_done` (1-based: the EMA is called after it)."""
        args = self.args
        return cosine_schedule(
            max(steps_done - 1, 0), args.teacher_momentum, args.teacher_momentum_end, self.total_steps
        )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW (Trainer's `optim` choice) over `dino_param_groups`; lr and weight decay are set by the scheduler."""
        if self.optimizer is None:
            optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            kwargs.pop("weight_decay", None)
            self.optimizer = optimizer_cls(
                dino_param_groups(self.accelerator.unwrap_model(self.model), self.args), **kwargs
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            self.lr_scheduler = DinoScheduler(optimizer or self.optimizer, self)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Per-module clipping (backbone, each head) as DINOv2; the returned norm is over all modules."""
        if not self.args.clip_grad_per_module:
            return super()._clip_grad_norm(model)
        self.accelerator.unscale_gradients()
        norms = [
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.args.max_grad_norm)
            for module in self.accelerator.unwrap_model(model).student.values()
        ]
        return torch.linalg.vector_norm(torch.stack(norms))

    # ----- one step ---------------------------------------------------------------------------------------------
    def _teacher_targets(self, loss: DINOLoss | IBOTPatchLoss, logits: torch.Tensor, temperature: float):
        if self.args.centering == "sinkhorn_knopp":
            return loss.sinkhorn_knopp(logits, temperature, self.args.sinkhorn_iterations)
        targets = loss.softmax_center(logits, temperature)
        loss.update_center(logits)  # the centre of the next step includes this batch
        return targets

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        args = self.args
        mask_weights = inputs.get("mask_weights")
        self.record_images(inputs["global_crops"].shape[0] // 2, inputs.get("num_skipped"))
        outputs = model(
            global_crops=inputs["global_crops"],
            local_crops=inputs.get("local_crops"),
            masks=inputs.get("masks") if args.use_ibot else None,
            mask_indices=inputs.get("mask_indices") if args.use_ibot else None,
        )
        temperature = self.teacher_temperature_at(self.state.global_step)
        teacher = outputs.teacher_global_logits
        teacher_probs = self._teacher_targets(self.dino_loss, teacher, temperature)
        students = list(outputs.student_global_logits.chunk(2))
        if outputs.student_local_logits is not None:
            num_local = outputs.student_local_logits.shape[0] // (teacher.shape[0] // 2)
            students += list(outputs.student_local_logits.chunk(num_local))
        dino = self.dino_loss(students, list(teacher_probs.chunk(2)))
        loss = args.dino_loss_weight * dino
        metrics = {
            "loss_dino": dino,
            "teacher_entropy": -(teacher_probs * torch.log(teacher_probs.clamp_min(1e-12))).sum(-1).mean(),
            "teacher_max_probability": teacher_probs.max(dim=-1).values.mean(),
            "center_norm": self.dino_loss.center.norm(),
            "teacher_temperature": temperature,
        }
        if self.ibot_loss is not None and outputs.student_patch_logits is not None:
            patch_probs = self._teacher_targets(self.ibot_loss, outputs.teacher_patch_logits, temperature)
            ibot = self.ibot_loss(outputs.student_patch_logits, patch_probs, mask_weights, teacher.shape[0])
            loss = loss + args.ibot_loss_weight * ibot
            metrics["loss_ibot"] = ibot
        if args.use_koleo:
            koleo = sum(koleo_loss(tokens) for tokens in outputs.student_cls_tokens.chunk(2))
            loss = loss + args.koleo_loss_weight * koleo
            metrics["loss_koleo"] = koleo
        self.record_metrics(**metrics)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            step = self.state.global_step
            logs.update(
                weight_decay=self.weight_decay_at(max(step - 1, 0)),
                teacher_momentum=self.teacher_momentum_at(step),
                peak_learning_rate=self.lr_at(max(step - 1, 0)),
            )
        super().log(logs, start_time)

    def model_card_text(self, dataset: str, metrics: dict) -> str:
        backbone = self.model.config.backbone_config
        args, size = self.args, getattr(backbone, "image_size", 224)
        model_id = card_model_id(args)
        usage = [
            "from PIL import Image",
            "from transformers import AutoImageProcessor, AutoModel",
            f'processor = AutoImageProcessor.from_pretrained({model_id!r}, subfolder="backbone")',
            f'backbone = AutoModel.from_pretrained({model_id!r}, subfolder="backbone", trust_remote_code=True).eval()',
            f'inputs = processor(images=[Image.new("RGB", ({size}, {size}))], return_tensors="pt")',
            "features = backbone(**inputs).last_hidden_state[:, 0]  # the CLS token: [B, hidden]",
        ]
        parts = [
            ("backbone", f"{backbone.model_type}: hidden {backbone.hidden_size}, {backbone.num_hidden_layers} layers, "
                         f"patch {self.model.config.patch_size}"),
            ("export", "the teacher backbone in `backbone/` (`AutoModel.from_pretrained(..., subfolder='backbone')`)"),
        ]  # fmt: skip
        keys = (*COMMON_TRAINING_KEYS, "method", "teacher_momentum", "teacher_temperature", "warmup_epochs")
        return model_card(
            f"DINO pretraining ({args.method})",
            f"A self-supervised {backbone.model_type} backbone pretrained with rae_hf ({args.method} objective).",
            usage,
            ["dino", args.method, "self-supervised", "image-feature-extraction"],
            parts=parts,
            settings=recipe_rows(args, keys),
            metrics=metrics,
            dataset=dataset,
            pipeline_tag="image-feature-extraction",
        )
