"""`RAETrainingArguments`: the stage-1 RAE losses, discriminator and schedule on top of the shared base arguments.
Defaults follow the official stage-1 training."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import BaseTrainingArguments

GAN_SCHEDULE_UNITS = ("epoch", "step")


@dataclass
class RAETrainingArguments(BaseTrainingArguments):
    """`BaseTrainingArguments` plus the RAE losses, discriminator and EMA. Defaults follow the RAE paper's stage 1."""

    learning_rate: float = field(default=2e-4, metadata={"help": "Decoder AdamW learning rate (paper: 2e-4)."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (paper: 0.95)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (paper: 0)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping; 0 = none (paper)."})
    min_lr: float = field(default=2e-5, metadata={"help": "Final lr of the cosine schedules (paper: 2e-5)."})

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
    disc_augment: bool = field(
        default=True, metadata={"help": "DiffAugment (translation, then colour; official) of the disc inputs."}
    )
    gan_quantize_generator_input: bool = field(
        default=False,
        metadata={
            "help": "Clamp and round the generator step's reconstruction to 8 bits (straight-through) before the "
            "discriminator. Off: the raw reconstruction, as the official code (the clamp zeroes the GAN gradient of "
            "out-of-range pixels)."
        },
    )
    warmup_starts_at_zero: bool = field(
        default=False,
        metadata={
            "help": "Warm-up lr of optimizer step s is lr*s/warmup (transformers: the first step has lr 0). Off: "
            "lr*(s+1)/warmup as the official code, for the decoder and the discriminator."
        },
    )
    ema_decay: float = field(default=0.9978, metadata={"help": "Decoder EMA decay per step; 0 disables the EMA."})
    fid_steps: int = field(default=1000, metadata={"help": "rFID/PSNR/SSIM on the validation split every N steps."})
    fid_at_epoch_end: bool = field(default=True, metadata={"help": "Also evaluate rFID at the end of each epoch."})

    def __post_init__(self):
        super().__post_init__()
        if self.gan_schedule_unit not in GAN_SCHEDULE_UNITS:
            raise ValueError(f"gan_schedule_unit={self.gan_schedule_unit!r} must be one of {GAN_SCHEDULE_UNITS}.")
        for name in ("lpips_start", "disc_start", "disc_upd_start", "perceptual_weight", "disc_weight", "l1_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if not self.disc_learning_rate > 0:
            raise ValueError(f"disc_learning_rate={self.disc_learning_rate} must be > 0.")
        if self.disc_updates < 1:
            raise ValueError(f"disc_updates={self.disc_updates} must be >= 1.")
        if self.disc_updates > 1 and self.gradient_accumulation_steps > 1:
            raise ValueError("disc_updates > 1 is only supported without gradient accumulation.")
