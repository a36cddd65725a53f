"""Stage-1 RAE training: L1 + LPIPS + adaptive-weight GAN against a frozen-DINO discriminator.

Each optimizer step of the decoder (Trainer's own loop: gradient accumulation, schedules, mixed precision, DDP)
is followed by `disc_updates` steps of the discriminator, which has its own AdamW, cosine-with-warmup schedule
and gradient scaler. Where things live in a checkpoint folder:
- `model.safetensors`: the RAE without the frozen encoder (it is rebuilt from the run's model on resume);
- `optimizer.pt`, `scheduler.pt`, `rng_state*.pth`, `trainer_state.json`: Trainer's own (data position included);
- `ema.safetensors`: the decoder EMA (`EMACallback`);
- `discriminator.safetensors` (trainable heads only) and `discriminator_state.pt` (optimizer, scheduler, scaler).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainingArguments
from transformers.optimization import get_scheduler

from ..callbacks import EMACallback, RFIDCallback, TorchProfilerCallback
from ..hub import rae_model_card, write_model_card
from ..losses import LPIPSLoss, adaptive_gan_weight, hinge_discriminator_loss, vanilla_generator_loss
from ..metrics import RFIDEvaluator, load_fid_stats
from ..models.rae import RAEModel
from ..models.rae.discriminator import DinoDiscriminator, quantize_8bit
from .base import RaeHfTrainer, load_torch_state

GAN_SCHEDULE_UNITS = ("epoch", "step")


@dataclass
class RAETrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the RAE losses, discriminator and EMA. Defaults follow the RAE paper's stage 1."""

    learning_rate: float = field(default=2e-4, metadata={"help": "Decoder AdamW learning rate (paper: 2e-4)."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (paper: 0.95)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (paper: 0)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping; 0 = none (paper)."})
    lr_scheduler_type: str = field(default="cosine_with_min_lr", metadata={"help": "Schedule of both optimizers."})
    min_lr: float = field(default=2e-5, metadata={"help": "Final lr of the cosine schedules (paper: 2e-5)."})
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Keep False: a NaN/inf loss must stop the run, not be averaged away."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Images arrive as `pixel_values`."})

    l1_weight: float = field(default=1.0, metadata={"help": "Weight of the pixel L1 loss."})
    perceptual_weight: float = field(default=1.0, metadata={"help": "Weight of LPIPS (VGG); 0 disables it."})
    lpips_start: float = field(default=0.0, metadata={"help": "When LPIPS joins the loss (see gan_schedule_unit)."})
    lpips_pretrained_backbone: bool = field(
        default=True, metadata={"help": "Use ImageNet VGG16 weights in LPIPS (False: random VGG, for offline tests)."}
    )
    lpips_backbone_weights: str | None = field(
        default=None, metadata={"help": "Local path of torchvision VGG16 weights for LPIPS (machines without network)."}
    )
    discriminator_name_or_path: str = field(
        default="facebook/dino-vits8", metadata={"help": "Frozen DINO ViT backbone of the discriminator (id or path)."}
    )
    disc_weight: float = field(default=0.75, metadata={"help": "Weight of the adaptive GAN term (paper: 0.75)."})
    disc_start: float = field(default=8.0, metadata={"help": "When the decoder starts receiving the GAN term."})
    disc_upd_start: float = field(default=6.0, metadata={"help": "When the discriminator starts updating."})
    disc_updates: int = field(default=1, metadata={"help": "Discriminator steps per decoder step."})
    max_d_weight: float = field(default=1e4, metadata={"help": "Clamp of the adaptive GAN weight."})
    gan_schedule_unit: str = field(
        default="epoch", metadata={"help": "Unit of lpips_start/disc_start/disc_upd_start: 'epoch' or 'step'."}
    )
    disc_input_size: int = field(default=224, metadata={"help": "Discriminator input size (DINO ViT-S/8: 224)."})
    disc_learning_rate: float = field(default=2e-4, metadata={"help": "Discriminator AdamW learning rate."})
    disc_adam_beta1: float = field(default=0.9, metadata={"help": "Discriminator AdamW beta1."})
    disc_adam_beta2: float = field(default=0.95, metadata={"help": "Discriminator AdamW beta2."})
    disc_weight_decay: float = field(default=0.0, metadata={"help": "Discriminator AdamW weight decay."})
    disc_augment: bool = field(default=True, metadata={"help": "DiffAugment (colour + translation) in the disc."})
    ema_decay: float = field(default=0.9978, metadata={"help": "Decoder EMA decay per step; 0 disables the EMA."})
    rfid_steps: int = field(
        default=1000, metadata={"help": "rFID/PSNR/SSIM on the validation split every N steps (0: never)."}
    )
    rfid_at_epoch_end: bool = field(default=True, metadata={"help": "Also evaluate rFID at the end of each epoch."})
    rfid_num_samples: int | None = field(
        default=5000, metadata={"help": "Validation images per rFID evaluation (all processes together)."}
    )
    sample_every: int = field(
        default=2500, metadata={"help": "Save/log a reconstruction grid every N steps (0: only at the end)."}
    )
    inception_weights: str | None = field(
        default=None, metadata={"help": "Local FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth)."}
    )
    fid_reference_stats: str | None = field(
        default=None,
        metadata={
            "help": "An ADM/torch-fidelity .npz (mu, sigma) replacing the validation images' "
            "statistics as the real side of the FID."
        },
    )
    log_csv: bool = field(default=True, metadata={"help": "Also write every logged value to output_dir/logs.csv."})
    profile_steps: int = field(
        default=0, metadata={"help": "Profile this many steps with torch.profiler (trace in output_dir/profile)."}
    )
    ema_apply_at_end: bool = field(
        default=True, metadata={"help": "Copy the EMA weights into the model when training ends (what gets published)."}
    )

    def __post_init__(self):
        if self.lr_scheduler_type == "cosine_with_min_lr" and not self.lr_scheduler_kwargs:
            self.lr_scheduler_kwargs = {"min_lr": self.min_lr}
        if self.accelerator_config is None:  # streamed data: every process reads its own batches (no concatenation)
            self.accelerator_config = {"dispatch_batches": False}
        super().__post_init__()
        if self.gan_schedule_unit not in GAN_SCHEDULE_UNITS:
            raise ValueError(f"gan_schedule_unit={self.gan_schedule_unit!r} must be one of {GAN_SCHEDULE_UNITS}.")
        for name in ("lpips_start", "disc_start", "disc_upd_start", "perceptual_weight", "disc_weight", "l1_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if self.disc_updates < 1:
            raise ValueError(f"disc_updates={self.disc_updates} must be >= 1.")
        if self.disc_updates > 1 and self.gradient_accumulation_steps > 1:
            raise ValueError("disc_updates > 1 is only supported without gradient accumulation.")
        if self.profile_steps < 0:
            raise ValueError(f"profile_steps={self.profile_steps} must be >= 0.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1).")


class HingeDiscriminatorObjective(nn.Module):
    """Hinge loss of the discriminator on a real and a fake batch in one forward (DDP: one forward per backward)."""

    def __init__(self, discriminator: DinoDiscriminator, augment: bool = True):
        super().__init__()
        self.discriminator = discriminator
        self.augment = augment

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits_real = self.discriminator(real, augment=self.augment)
        logits_fake = self.discriminator(quantize_8bit(fake), augment=self.augment)
        return hinge_discriminator_loss(logits_real, logits_fake), logits_real.mean(), logits_fake.mean()


class RAETrainer(RaeHfTrainer):
    """Trains an `RAEModel` decoder adversarially. Pass `discriminator`/`perceptual_loss` to override the ones built
    from the arguments (tests use tiny ones); everything else is `transformers.Trainer`."""

    args: RAETrainingArguments

    def __init__(
        self,
        model: RAEModel,
        args: RAETrainingArguments,
        discriminator: DinoDiscriminator | None = None,
        perceptual_loss: nn.Module | None = None,
        **kwargs,
    ):
        super().__init__(model=model, args=args, **kwargs)
        self.can_return_loss = True  # evaluation has no labels: the loss is the reconstruction L1
        if discriminator is None:
            discriminator = DinoDiscriminator.from_pretrained_backbone(
                args.discriminator_name_or_path, input_size=args.disc_input_size
            )
        if perceptual_loss is None and args.perceptual_weight > 0:
            perceptual_loss = LPIPSLoss(args.lpips_pretrained_backbone, args.lpips_backbone_weights)
        self.perceptual_loss = perceptual_loss.to(args.device) if perceptual_loss is not None else None
        self.disc_objective = self.accelerator.prepare_model(
            HingeDiscriminatorObjective(discriminator.to(args.device), augment=args.disc_augment)
        )
        self.discriminator = discriminator
        self.disc_optimizer = torch.optim.AdamW(
            discriminator.heads_parameters(),
            lr=args.disc_learning_rate,
            betas=(args.disc_adam_beta1, args.disc_adam_beta2),
            weight_decay=args.disc_weight_decay,
        )
        self.disc_scaler = torch.amp.GradScaler(args.device.type, enabled=args.fp16)
        self.disc_lr_scheduler = None
        self.ema = EMACallback(args.ema_decay, args.ema_apply_at_end) if args.ema_decay > 0 else None
        if self.ema is not None:
            self.add_callback(self.ema)
        if self.eval_dataset is not None and (args.rfid_steps > 0 or args.rfid_at_epoch_end):
            self.add_callback(self._build_rfid_callback())
        if args.profile_steps > 0:
            self.add_callback(TorchProfilerCallback(args.output_dir, active=args.profile_steps))
        self._schedule_steps: dict[str, int] | None = None
        self._saving_checkpoint = False

    def _build_rfid_callback(self) -> RFIDCallback:
        args = self.args
        evaluator = RFIDEvaluator(
            inception_weights=args.inception_weights,
            device=args.device,
            autocast_dtype=torch.bfloat16 if args.bf16 else None,
        )
        reference = load_fid_stats(args.fid_reference_stats) if args.fid_reference_stats else None
        return RFIDCallback(
            self,
            evaluator,
            self.eval_dataset,
            self.data_collator,
            args.per_device_eval_batch_size,
            eval_steps=args.rfid_steps,
            at_epoch_end=args.rfid_at_epoch_end,
            num_samples=args.rfid_num_samples,
            sample_every=args.sample_every,
            ema=self.ema,
            reference=reference,
        )

    # ----- schedule ---------------------------------------------------------------------------------------------
    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        num_update_steps_per_epoch, max_steps = values[1], values[-1]
        self._set_schedule(num_update_steps_per_epoch if self._has_length(dataloader) else None)
        self.disc_lr_scheduler = get_scheduler(
            args.lr_scheduler_type,
            self.disc_optimizer,
            num_warmup_steps=args.get_warmup_steps(max_steps),
            num_training_steps=max_steps,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
        return values

    @staticmethod
    def _has_length(dataloader) -> bool:
        try:
            return len(dataloader) > 0
        except TypeError:
            return False

    def _set_schedule(self, steps_per_epoch: int | None) -> None:
        """Turn `lpips_start`, `disc_upd_start`, `disc_start` into optimizer-step indices."""
        args = self.args
        if args.gan_schedule_unit == "epoch":
            if steps_per_epoch is None:
                raise ValueError(
                    "The training data has no length (streaming), so epochs are undefined: pass "
                    "--gan_schedule_unit step with lpips_start/disc_upd_start/disc_start in optimizer steps."
                )
            scale = steps_per_epoch
        else:
            scale = 1
        self._schedule_steps = {
            name: round(getattr(args, name) * scale) for name in ("lpips_start", "disc_upd_start", "disc_start")
        }

    def schedule_step(self, name: str) -> int:
        """First optimizer step at which `name` ('lpips_start', 'disc_upd_start', 'disc_start') is active."""
        if self._schedule_steps is None:
            raise RuntimeError("The loss schedule is set when training starts.")
        return self._schedule_steps[name]

    # ----- one step ---------------------------------------------------------------------------------------------
    @staticmethod
    def _target_like(images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """The input images at the reconstruction's size (bicubic) — the target of the pixel losses."""
        if images.shape[-2:] == reconstruction.shape[-2:]:
            return images
        return F.interpolate(images, size=reconstruction.shape[-2:], mode="bicubic", align_corners=False)

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        """Pixel L1 of the reconstruction: what `trainer.evaluate()` reports as `eval_loss` (training uses
        `training_step`, which adds LPIPS and the GAN term)."""
        outputs = model(pixel_values=inputs["pixel_values"])
        reconstruction = outputs.reconstruction
        loss = (reconstruction.float() - self._target_like(inputs["pixel_values"], reconstruction)).abs().mean()
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        images = inputs["pixel_values"]
        self.record_images(images.shape[0], skipped=inputs.get("num_skipped"))
        step = self.state.global_step
        accumulation = self.current_gradient_accumulation_steps
        args = self.args

        with self.accelerator.autocast():
            reconstruction = model(pixel_values=images).reconstruction
            target = self._target_like(images, reconstruction)
            l1 = (reconstruction.float() - target).abs().mean()
            rec_loss = args.l1_weight * l1
            metrics = {"loss_l1": l1}
            if self.perceptual_loss is not None and step >= self.schedule_step("lpips_start"):
                lpips = self.perceptual_loss(reconstruction.float(), target)
                rec_loss = rec_loss + args.perceptual_weight * lpips
                metrics["loss_lpips"] = lpips
            loss = rec_loss
            if args.disc_weight > 0 and step >= self.schedule_step("disc_start"):
                gan_loss = self._generator_gan_loss(reconstruction)
                last_layer = self.accelerator.unwrap_model(model).decoder_last_layer_weight()
                d_weight = adaptive_gan_weight(rec_loss, gan_loss, last_layer, args.max_d_weight)
                loss = rec_loss + args.disc_weight * d_weight * gan_loss
                metrics.update(loss_gan=gan_loss, d_weight=d_weight)

        self.accelerator.backward(loss / accumulation)
        if args.disc_weight > 0 and step >= self.schedule_step("disc_upd_start"):
            metrics.update(self._discriminator_steps(images, reconstruction.detach(), accumulation))
        if self.accelerator.sync_gradients:  # the disc schedule follows the decoder's optimizer steps
            with warnings.catch_warnings():  # steps before disc_upd_start are intended, not a misuse
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.disc_lr_scheduler.step()
        self.record_metrics(**metrics)
        return loss.detach() / accumulation

    def _generator_gan_loss(self, reconstruction: torch.Tensor) -> torch.Tensor:
        """GAN loss of the decoder through the discriminator, whose weights get no gradient (and no DDP hooks)."""
        heads = list(self.discriminator.heads_parameters())
        for p in heads:
            p.requires_grad_(False)
        try:
            logits_fake = self.discriminator(quantize_8bit(reconstruction.float()), augment=self.args.disc_augment)
        finally:
            for p in heads:
                p.requires_grad_(True)
        return vanilla_generator_loss(logits_fake)

    def _discriminator_steps(self, real: torch.Tensor, fake: torch.Tensor, accumulation: int) -> dict:
        """Hinge-loss backward for this micro-batch; optimizer steps when Trainer syncs the decoder's gradients."""
        sync = self.accelerator.sync_gradients
        for _ in range(self.args.disc_updates):
            with self.accelerator.autocast():
                if sync:
                    d_loss, logits_real, logits_fake = self.disc_objective(real, fake)
                else:
                    with self.accelerator.no_sync(self.disc_objective):
                        d_loss, logits_real, logits_fake = self.disc_objective(real, fake)
            self.disc_scaler.scale(d_loss / accumulation).backward()
            if sync:
                self.disc_scaler.step(self.disc_optimizer)
                self.disc_scaler.update()
                self.disc_optimizer.zero_grad(set_to_none=True)
        return {"loss_disc": d_loss, "logits_real": logits_real, "logits_fake": logits_fake}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.disc_lr_scheduler is not None:
            logs["disc_learning_rate"] = self.disc_lr_scheduler.get_last_lr()[0]
        super().log(logs, start_time)

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints leave out the frozen encoder; `save_model()` writes the whole, self-contained model."""
        if self._saving_checkpoint and state_dict is None:
            state_dict = {k: v for k, v in self.model.state_dict().items() if not k.startswith("encoder.")}
        super()._save(output_dir, state_dict=state_dict)

    def _issue_warnings_after_load(self, load_result) -> None:
        load_result.missing_keys[:] = [k for k in load_result.missing_keys if not k.startswith("encoder.")]
        super()._issue_warnings_after_load(load_result)

    def create_model_card(self, dataset: str | None = None, **kwargs) -> None:
        """Write the RAE model card (encoder, decoder, data, recipe, last logged metrics) to `output_dir`."""
        if not self.is_world_process_zero():
            return
        metrics: dict = {}
        for entry in self.state.log_history:
            metrics.update({k: v for k, v in entry.items() if k not in ("epoch", "step")})
        model = self.accelerator.unwrap_model(self.model)
        write_model_card(self.args.output_dir, rae_model_card(model, dataset or "unknown", self.args, metrics))

    def save_extra_state(self, output_dir: str) -> None:
        safetensors.torch.save_file(
            self.discriminator.trainable_state_dict(), os.path.join(output_dir, "discriminator.safetensors")
        )
        state = {
            "optimizer": self.disc_optimizer.state_dict(),
            "scheduler": self.disc_lr_scheduler.state_dict(),
            "scaler": self.disc_scaler.state_dict(),
        }
        torch.save(state, os.path.join(output_dir, "discriminator_state.pt"))

    def load_extra_state(self, checkpoint_dir: str) -> None:
        heads = safetensors.torch.load_file(os.path.join(checkpoint_dir, "discriminator.safetensors"))
        self.discriminator.load_trainable_state_dict(heads)
        state = load_torch_state(os.path.join(checkpoint_dir, "discriminator_state.pt"))
        self.disc_optimizer.load_state_dict(state["optimizer"])
        self.disc_lr_scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.disc_scaler.load_state_dict(state["scaler"])
