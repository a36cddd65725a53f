"""Stage-1 RAE training: L1 + LPIPS + adaptive-weight GAN against a frozen-DINO discriminator.

Each optimizer step of the decoder (Trainer's own loop: gradient accumulation, schedules, mixed precision, DDP)
is followed by `disc_updates` steps of the discriminator (`on_optimizer_step`), which has its own AdamW,
cosine-with-warmup schedule (stepped only when the discriminator updates) and gradient scaler. As in the official
code, the discriminator sees a fresh reconstruction by the updated decoder in eval mode (no noise), decoded from the
encoder tokens of the generator step. Where things live in a checkpoint folder:
- `model.safetensors`: the RAE without the frozen encoder (it is rebuilt from the run's model on resume);
- `optimizer.pt`, `scheduler.pt`, `rng_state*.pth`, `trainer_state.json`: Trainer's own (data position included);
- `ema.safetensors`: the decoder EMA (`EMACallback`), `discriminator.safetensors` (trainable heads only) and
  `discriminator_state.safetensors` + `.json` (optimizer, scheduler, scaler; no pickle): registered states.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import torch
import torch._functorch.config
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from transformers import TrainerCallback
from transformers.optimization import get_scheduler

from ..callbacks import EMACallback, RFIDCallback
from ..data.transforms import resize_images
from ..evaluation import RFIDEvaluator, load_reference_statistics
from ..hub import rae_model_card
from ..losses import LPIPSLoss, adaptive_gan_weight, hinge_discriminator_loss, vanilla_generator_loss
from ..models.rae import RAEModel
from ..models.rae.discriminator import DinoDiscriminator, quantize_8bit
from .base_trainer import BaseTrainer, StateHandle, TrainingValues
from .rae_config import RAETrainingArguments


def _first_step_warmup(schedule: Callable[[int], float], warmup_steps: int, step: int) -> float:
    """Official RAE warm-up: step `s` (0-based) of the warm-up gets transformers' factor of step `s + 1`, i.e.
    `(s + 1) / warmup_steps`, so the first step already trains; after the warm-up the schedule is unchanged."""
    return schedule(step + 1) if step < warmup_steps else schedule(step)


def build_lr_scheduler(
    args: RAETrainingArguments, optimizer: torch.optim.Optimizer, num_training_steps: int
) -> LRScheduler:
    """`lr_scheduler_type` with `args`' warm-up, shifted by one step as the official code unless
    `warmup_starts_at_zero` (then transformers' schedule, whose first step has lr 0)."""
    warmup_steps = args.get_warmup_steps(num_training_steps)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    if args.warmup_starts_at_zero or warmup_steps == 0 or not isinstance(scheduler, LambdaLR):
        return scheduler
    return LambdaLR(optimizer, [partial(_first_step_warmup, f, warmup_steps) for f in scheduler.lr_lambdas])


class _DiscriminatorUpdate(TrainerCallback):
    """Runs the discriminator step right after each optimizer step of the decoder."""

    def __init__(self, trainer: RAETrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._discriminator_steps()


class HingeDiscriminatorObjective(nn.Module):
    """Hinge loss of the discriminator on a fake and a real batch (DDP: one forward per backward). Fakes first, as
    the official code: each train-mode forward runs one spectral-norm power iteration."""

    def __init__(self, discriminator: DinoDiscriminator, augment: bool = True):
        super().__init__()
        self.discriminator = discriminator
        self.augment = augment

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits_fake = self.discriminator(quantize_8bit(fake), augment=self.augment)
        logits_real = self.discriminator(real, augment=self.augment)
        return hinge_discriminator_loss(logits_real, logits_fake), logits_real.mean(), logits_fake.mean()


class RAETrainer(BaseTrainer):
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
        if args.torch_compile:  # the adaptive GAN weight runs the compiled backward twice (retain_graph)
            torch._functorch.config.donated_buffer = False
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
            fused=args.optim == "adamw_torch_fused" or None,  # Trainer's default optim (the decoder's) on torch >= 2.8
        )
        self.disc_scaler = torch.amp.GradScaler(args.device.type, enabled=args.fp16)
        self.disc_lr_scheduler = None
        self._pending_disc_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.add_callback(_DiscriminatorUpdate(self))
        discriminator.eval()  # train mode only inside its own update, as the official loop
        self.ema = None
        if args.ema_decay > 0:
            self.ema = self.add_ema(EMACallback(args.ema_decay, apply_at_train_end=args.ema_apply_at_end))
        self.register_state(
            "discriminator",
            StateHandle(discriminator.trainable_state_dict, discriminator.load_trainable_state_dict),
        )
        self.register_state(
            "discriminator_state", StateHandle(self._disc_training_state, self._load_disc_training_state)
        )
        if self.eval_dataset is not None and (args.fid_steps > 0 or args.fid_at_epoch_end):
            image_evaluation = self._build_rfid_callback()
            self.add_callback(image_evaluation)
            self.register_state("image_evaluation", image_evaluation)  # its best rFID continues across a resume
        self._schedule_steps: dict[str, int] | None = None
        self._saving_checkpoint = False

    def _build_rfid_callback(self) -> RFIDCallback:
        args = self.args
        evaluator = RFIDEvaluator(
            inception_weights=args.inception_weights,
            device=args.device,
            autocast_dtype=torch.bfloat16 if args.bf16 else None,
        )
        reference = load_reference_statistics(args.fid_reference_stats) if args.fid_reference_stats else None
        return RFIDCallback(
            self,
            evaluator,
            self.eval_dataset,
            self.data_collator,
            args.per_device_eval_batch_size,
            eval_steps=args.fid_steps,
            at_epoch_end=args.fid_at_epoch_end,
            num_samples=args.fid_num_samples,
            sample_every=args.sample_every,
            ema=self.ema,
            reference=reference,
        )

    # ----- schedule ---------------------------------------------------------------------------------------------
    def on_training_values(self, values: TrainingValues, sized: bool) -> None:
        self._set_schedule(values.num_update_steps_per_epoch if sized else None)
        # the same schedule as the decoder's, but it advances only when the discriminator updates (official)
        self.disc_lr_scheduler = build_lr_scheduler(self.args, self.disc_optimizer, values.max_steps)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The decoder's schedule (see `build_lr_scheduler`: warm-up as the official code by default)."""
        if self.lr_scheduler is None:
            self.lr_scheduler = build_lr_scheduler(self.args, optimizer or self.optimizer, num_training_steps)
            self._created_lr_scheduler = True
        return self.lr_scheduler

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
        """The input images at the reconstruction's size — the target of the pixel losses (the metrics' resize)."""
        return resize_images(images, reconstruction.shape[-2:])

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
        update_disc = args.disc_weight > 0 and step >= self.schedule_step("disc_upd_start")

        with self.accelerator.autocast():
            outputs = model(pixel_values=images, return_encoder_tokens=update_disc)
            reconstruction = outputs.reconstruction
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
        if update_disc:  # used by `_discriminator_steps` once the decoder's optimizer has stepped
            self._pending_disc_batches.append((images, outputs.encoder_tokens.detach()))
        self.record_metrics(**metrics)
        return loss.detach() / accumulation

    def _generator_gan_loss(self, reconstruction: torch.Tensor) -> torch.Tensor:
        """GAN loss of the decoder: the raw reconstruction (official; `gan_quantize_generator_input` for an 8-bit
        straight-through input) through DiffAugment and the discriminator in eval mode (no spectral-norm power
        iteration), whose weights get no gradient (and no DDP hooks)."""
        fake = reconstruction.float()
        if self.args.gan_quantize_generator_input:
            fake = quantize_8bit(fake)
        if self.discriminator.training:
            self.discriminator.eval()
        heads = list(self.discriminator.heads_parameters())
        for p in heads:
            p.requires_grad_(False)
        try:
            logits_fake = self.discriminator(fake, augment=self.args.disc_augment)
        finally:
            for p in heads:
                p.requires_grad_(True)
        return vanilla_generator_loss(logits_fake)

    @torch.no_grad()
    def _fresh_reconstructions(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Reconstructions by the (just updated) decoder in eval mode, without noise, from the cached encoder tokens:
        what an eval-mode forward of the model gives, without running the frozen encoder again."""
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        try:
            with self.accelerator.autocast():
                return [model.decode(model.tokens_to_latents(tokens)).reconstruction for _, tokens in batches]
        finally:
            model.train()

    def _discriminator_steps(self) -> None:
        """`disc_updates` hinge-loss updates of the discriminator on this optimizer step's micro-batches (gradients
        accumulated over them, synchronized once under DDP); its lr scheduler steps with every update."""
        batches, self._pending_disc_batches = self._pending_disc_batches, []
        if not batches:
            return
        fakes = self._fresh_reconstructions(batches)
        self.discriminator.train()
        for _ in range(self.args.disc_updates):
            for index, ((real, _), fake) in enumerate(zip(batches, fakes, strict=True)):
                last = index == len(batches) - 1
                with contextlib.nullcontext() if last else self.accelerator.no_sync(self.disc_objective):
                    with self.accelerator.autocast():
                        d_loss, logits_real, logits_fake = self.disc_objective(real, fake)
                    self.disc_scaler.scale(d_loss / len(batches)).backward()
                self.record_metrics(loss_disc=d_loss, logits_real=logits_real, logits_fake=logits_fake)
            self.disc_scaler.step(self.disc_optimizer)
            self.disc_scaler.update()
            self.disc_optimizer.zero_grad(set_to_none=True)
            self.disc_lr_scheduler.step()
        self.discriminator.eval()

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

    def model_card_text(self, dataset: str, metrics: dict) -> str:
        """The RAE model card: encoder, decoder, data, recipe and the last logged metrics."""
        return rae_model_card(self.accelerator.unwrap_model(self.model), dataset, self.args, metrics)

    def _disc_training_state(self) -> dict:
        return {
            "optimizer": self.disc_optimizer.state_dict(),
            "scheduler": self.disc_lr_scheduler.state_dict(),
            "scaler": self.disc_scaler.state_dict(),
        }

    def _load_disc_training_state(self, state: dict) -> None:
        self.disc_optimizer.load_state_dict(state["optimizer"])
        self.disc_lr_scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.disc_scaler.load_state_dict(state["scaler"])
