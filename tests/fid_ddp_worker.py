"""Run by `accelerate launch` with 2 CPU processes.

- `fid_ddp_worker.py OUT`: rFID / PSNR / SSIM of a tiny RAE over 11 images sharded 6 / 5 (no padding); each rank
  writes `OUT/rank<r>.json` and its reconstructions under `OUT/recon`.
- `fid_ddp_worker.py OUT generation`: FID / IS of 11 class-conditional samples (6 / 5 per rank) from a seeded sampler;
  each rank writes `OUT/generation_rank<r>.json` and its samples under `OUT/samples`.

`evaluate_shard(None, ...)` / `evaluate_generation_shard(None, ...)` are the same computations in one process (the
tests' references)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(__file__))

from conftest import SyntheticImages, tiny_rae

from rae_hf.data import shard_for_process
from rae_hf.evaluation import RFIDEvaluator, evaluate_generation
from rae_hf.metrics import FIDMetric

NUM_IMAGES = 11  # 2 processes: 6 and 5 images


def tiny_feature(seed: int = 0) -> nn.Module:
    """A small random conv net mapping [0, 1] images to 24-d features (a plug-in FID feature; cheap on CPU)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()


class TinyInception(nn.Module):
    """Stand-in with the `InceptionFeatureExtractor` interface: 6-d pool features and 5-way logits of an image."""

    num_features = 6

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6, 5, bias=False)

    def pool_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.pool(images.float()) * 3
        return pool, self.fc(pool) * 4

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool_and_logits(images)[0]


def seeded_sampler(count: int, labels: torch.Tensor) -> torch.Tensor:
    """Images that depend only on their labels and the batch's first label (so any sharding gives the same set)."""
    generator = torch.Generator().manual_seed(int(labels[0]) * 1000 + count)
    images = torch.rand(count, 3, 16, 16, generator=generator)
    images[:, 0] = labels.view(-1, 1, 1).float() / 3
    return images


def evaluate_generation_shard(accelerator: Accelerator | None, save_dir: Path) -> dict:
    """FID against fixed statistics and IS of 11 samples of 3 classes, 1 sample per batch."""
    feature = TinyInception()
    with torch.no_grad():
        real = feature(torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(5))).double()
    reference = (real.mean(dim=0), torch.cov(real.T))  # by hand: a FIDMetric would sum the ranks' copies
    return evaluate_generation(
        seeded_sampler,
        NUM_IMAGES,
        1,
        accelerator,
        reference=reference,
        num_classes=3,
        feature=feature,
        save_dir=save_dir,
        inception_score_splits=2,
    )


def evaluate_shard(accelerator: Accelerator | None, save_dir: Path) -> dict:
    """Evaluate this process's shard; also rFID against the real statistics gathered from all processes."""
    process_index = accelerator.process_index if accelerator is not None else 0
    num_processes = accelerator.num_processes if accelerator is not None else 1
    shard = shard_for_process(SyntheticImages(count=NUM_IMAGES, size=32, seed=1), process_index, num_processes)
    loader = DataLoader(shard, batch_size=4)
    model = tiny_rae().eval()
    evaluator = RFIDEvaluator(feature=tiny_feature())
    result = evaluator.evaluate(
        lambda images: model(images).reconstruction, loader, accelerator=accelerator, save_dir=save_dir
    )
    real = FIDMetric(feature=tiny_feature())
    for batch in loader:
        real.update(batch["pixel_values"], real=True)
    mu, sigma = real.real_statistics()
    with_reference = evaluator.evaluate(
        lambda images: model(images).reconstruction, loader, accelerator=accelerator, reference=(mu, sigma)
    )
    return {**result, "rfid_reference": with_reference["rfid"], "local_images": len(shard)}


def main(out_dir: str, mode: str = "reconstruction") -> None:
    accelerator = Accelerator(cpu=True)
    if mode == "generation":
        result = evaluate_generation_shard(accelerator, Path(out_dir) / "samples")
        with open(os.path.join(out_dir, f"generation_rank{accelerator.process_index}.json"), "w") as file:
            json.dump(result, file)
        return
    result = evaluate_shard(accelerator, Path(out_dir) / "recon")
    result["world_size"] = accelerator.num_processes
    with open(os.path.join(out_dir, f"rank{accelerator.process_index}.json"), "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main(*sys.argv[1:])
