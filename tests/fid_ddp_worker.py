"""Run by `accelerate launch` with 2 CPU processes: rFID / PSNR / SSIM of a tiny RAE over 11 images sharded 6 / 5
(no padding); each rank writes `<out_dir>/rank<r>.json` and its reconstructions under `<out_dir>/recon`.

`evaluate_shard(None, ...)` is the same computation in one process (the test's reference)."""

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

from rae_hf.metrics import FIDMetric, RFIDEvaluator, shard_for_process

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


def main(out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    result = evaluate_shard(accelerator, Path(out_dir) / "recon")
    result["world_size"] = accelerator.num_processes
    with open(os.path.join(out_dir, f"rank{accelerator.process_index}.json"), "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main(sys.argv[1])
