"""Tiny trainers of every method (RAE, JiT, DINO, probe fine-tuning, pruning, DiT) on CPU or CUDA, for the CUDA-path
tests (`tests/gpu`) and the host-sync walk (`tests/foundation/test_no_host_sync.py`). Models come from configs, data
is made on the fly; each trainer runs a few optimizer steps in seconds on a CPU."""

from __future__ import annotations

import torch
from conftest import SyntheticImages, tiny_discriminator, tiny_rae
from torch.utils.data import Dataset
from transformers import Dinov2Config, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from rae_hf.data import ImageCollator
from rae_hf.data.latent_cache import LatentCollator
from rae_hf.data.multicrop import MultiCropCollator
from rae_hf.losses import LPIPSLoss
from rae_hf.models.backbone import FrozenBackbone
from rae_hf.models.dino import DinoConfig, DinoModel
from rae_hf.models.dit import DiTDHConfig, DiTDHModel
from rae_hf.models.jit import JiTConfig, JiTModel
from rae_hf.models.probe import ProbeClassifier
from rae_hf.models.vit import ViTVariantConfig, ViTVariantForImageClassification
from rae_hf.trainers.base_trainer import BaseTrainer

METHODS = ("rae", "jit", "dino", "probe", "prune", "dit")


class Labelled(Dataset):
    """`count` smooth random images in [0, 1] at `size` px with labels `i % 3`."""

    def __init__(self, count: int = 16, size: int = 16, seed: int = 0):
        self.images = SyntheticImages(count, size, seed).images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index], "label": index % 3}


class MultiCrops(Dataset):
    """2 global 16 px + 2 local 8 px random views per image, as `MultiCropTransform` returns them."""

    def __init__(self, count: int = 16, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.views = [
            [torch.rand(3, 16, 16, generator=generator) for _ in range(2)]
            + [torch.rand(3, 8, 8, generator=generator) for _ in range(2)]
            for _ in range(count)
        ]

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": {"views": self.views[index], "seed": index}}


class Latents(Dataset):
    def __init__(self, count: int = 16, seed: int = 0):
        self.latents = torch.randn(count, 8, 4, 4, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"latents": self.latents[index], "labels": index % 3}


def common_args(output_dir, device: str, **overrides) -> dict:
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3, warmup_steps=0,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=device == "cpu", seed=0,
        dataloader_num_workers=0, disable_tqdm=True, log_csv=False, save_on_signal=False,
    )  # fmt: skip
    values.update(overrides)
    return values


def _probe_encoder() -> FrozenBackbone:
    from rae_hf.probe import ProbeEncoder

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_register_tokens=4,
    )  # fmt: skip
    return ProbeEncoder(Dinov2WithRegistersModel(config), 16, (0.5,) * 3, (0.25,) * 3, name_or_path="tiny")


def make_trainer(method: str, output_dir, device: str = "cpu", **overrides) -> BaseTrainer:
    """A tiny trainer of `method` whose `train()` runs 3 optimizer steps (`overrides` go to its arguments)."""
    args = common_args(output_dir, device, **overrides)
    if method == "rae":
        from rae_hf.trainers.rae_config import RAETrainingArguments
        from rae_hf.trainers.rae_trainer import RAETrainer

        rae_args = dict(gan_schedule_unit="step", lpips_start=0, disc_upd_start=0, disc_start=1, ema_decay=0.9)
        rae_args.update(lpips_pretrained_backbone=False, disc_input_size=16)
        training_args = RAETrainingArguments(**{**rae_args, **args})
        return RAETrainer(
            model=tiny_rae(), args=training_args, discriminator=tiny_discriminator(),
            perceptual_loss=LPIPSLoss(pretrained_backbone=False), train_dataset=SyntheticImages(16),
            data_collator=ImageCollator(),
        )  # fmt: skip
    if method == "jit":
        from rae_hf.trainers.jit_config import JiTTrainingArguments
        from rae_hf.trainers.jit_trainer import JiTTrainer

        torch.manual_seed(0)
        config = JiTConfig(
            image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            bottleneck_dim=8, num_classes=3, num_in_context_tokens=4, in_context_start=1,
        )  # fmt: skip
        training_args = JiTTrainingArguments(**{**dict(warmup_epochs=0, ema_decay=0.9, num_grid_samples=0), **args})
        return JiTTrainer(
            model=JiTModel(config), args=training_args, train_dataset=Labelled(), data_collator=ImageCollator()
        )
    if method == "dino":
        from rae_hf.trainers.dino_config import DinoTrainingArguments
        from rae_hf.trainers.dino_trainer import DinoTrainer

        torch.manual_seed(0)
        backbone = Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4,
            image_size=16, drop_path_rate=0.0, layerscale_value=1e-5,
        )  # fmt: skip
        config = DinoConfig(
            backbone_config=backbone, image_size=16, head_out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16
        )
        dino_args = dict(epoch_length=2, warmup_epochs=1, warmup_teacher_temperature_epochs=1)
        training_args = DinoTrainingArguments(**{**dino_args, **args})
        return DinoTrainer(
            model=DinoModel(config), args=training_args, train_dataset=MultiCrops(), data_collator=MultiCropCollator(4)
        )
    if method == "probe":
        from rae_hf.trainers.probe_config import ProbeTrainingArguments
        from rae_hf.trainers.probe_trainer import ProbeTrainer

        classifier = ProbeClassifier.from_encoder(_probe_encoder(), "cls", {0: "a", 1: "b", 2: "c"})
        classifier.requires_grad_(True)
        return ProbeTrainer(
            model=classifier, args=ProbeTrainingArguments(**args), train_dataset=Labelled(),
            data_collator=ImageCollator(),
        )  # fmt: skip
    if method == "prune":
        from rae_hf.prune import PruningCallback
        from rae_hf.trainers.prune_config import PruneTrainingArguments
        from rae_hf.trainers.prune_trainer import PruneTrainer

        torch.manual_seed(0)
        config = ViTVariantConfig(
            image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, head_dim=8,
            intermediate_size=48, num_labels=3,
        )  # fmt: skip
        return PruneTrainer(
            model=ViTVariantForImageClassification(config), args=PruneTrainingArguments(**args),
            train_dataset=Labelled(), data_collator=ImageCollator(), pruning=PruningCallback(compute_next=False),
        )  # fmt: skip
    if method == "dit":
        from rae_hf.trainers.dit_config import DiTTrainingArguments
        from rae_hf.trainers.dit_trainer import DiTTrainer

        torch.manual_seed(0)
        config = DiTDHConfig(
            in_channels=8, input_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            head_hidden_size=32, head_num_layers=1, head_num_attention_heads=2, num_classes=3,
        )  # fmt: skip
        training_args = DiTTrainingArguments(**{**dict(ema_decay=0.9, num_grid_samples=0), **args})
        return DiTTrainer(
            model=DiTDHModel(config), args=training_args, train_dataset=Latents(), data_collator=LatentCollator()
        )
    raise ValueError(f"Unknown method {method!r}; one of {METHODS}.")


def logged_losses(trainer: BaseTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
