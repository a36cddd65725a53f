"""The defaults rae_hf turns on for CUDA runs, as far as a CPU can check them: fused AdamW is Trainer's choice for every
trainer, persistent data workers (which must still see each new epoch of the seeded augmentations), non-blocking
batch copies, and CPU runs left as they were (no TF32 request without CUDA)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from trainer_toys import METHODS, make_trainer

from rae_hf.data.seeded import SeededAugmentationDataset
from rae_hf.trainers.base_config import BaseTrainingArguments


class RandomDraw(Dataset):
    """Each item is a draw from torch's global RNG (what a random augmentation does)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(())


def test_worker_defaults(tmp_path):
    args = BaseTrainingArguments(output_dir=str(tmp_path), use_cpu=True, dataloader_num_workers=2)
    assert args.dataloader_persistent_workers is True
    assert args.accelerator_config.dispatch_batches is False and args.accelerator_config.non_blocking is False
    assert args.tf32 is None  # nothing requested on a CPU run
    no_workers = BaseTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert no_workers.dataloader_persistent_workers is False  # torch refuses persistent workers without workers
    explicit = BaseTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2, use_cpu=True,
                                     dataloader_persistent_workers=False)  # fmt: skip
    assert explicit.dataloader_persistent_workers is False


def test_persistent_workers_see_every_epoch():
    """Workers that outlive an epoch draw the new epoch's augmentations (the epoch lives in shared memory), exactly
    as a fresh single-process loader does."""
    dataset = SeededAugmentationDataset(RandomDraw(), seed=3)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)
    seen = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        seen.append(torch.cat(list(loader)))
    expected = []
    for epoch in range(3):
        fresh = SeededAugmentationDataset(RandomDraw(), seed=3)
        fresh.set_epoch(epoch)
        expected.append(torch.stack([fresh[i] for i in range(4)]))
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_every_trainer_builds_fused_adamw(tmp_path):
    """Trainer's default `optim` is fused AdamW (torch >= 2.8); the trainers with their own parameter groups (DINO,
    probe) and the RAE discriminator keep it."""
    for method in METHODS:
        trainer = make_trainer(method, tmp_path / method)
        assert trainer.args.optim == "adamw_torch_fused", method
        optimizer = trainer.create_optimizer()
        assert optimizer.defaults.get("fused") is True, (method, type(optimizer).__name__)
        if method == "rae":
            assert trainer.disc_optimizer.defaults.get("fused") is True
