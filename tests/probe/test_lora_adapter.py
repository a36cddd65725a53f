"""LoRA fine-tuning outputs (issue 22 item 1, issue 20 item 6): the adapter carries the whole head, BatchNorm running
statistics included, so a resumed run publishes bitwise the same model as a straight one, and the unmerged adapter
saved in `adapter/` reloads with `PeftModel.from_pretrained(lora_base(out), out/adapter)` to the merged logits."""

from __future__ import annotations

import json
import logging
import shutil

import datasets
import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image
from probe_toys import save_tiny_encoder
from safetensors.torch import load_file
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from rae_hf.models.probe import ProbeClassifier
from rae_hf.probe import load_encoder
from rae_hf.probe.finetune import apply_lora, lora_base, save_finetuned
from rae_hf.scripts import run_probe


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny encoder and a saved 4-class dataset of noisy colour squares (24 train, 8 validation images)."""
    root = tmp_path_factory.mktemp("lora")
    colours = np.array(((220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40)))

    def split(count: int, seed: int) -> datasets.Dataset:
        rng = np.random.default_rng(seed)
        images = [Image.fromarray(np.clip(colours[i % 4] + rng.integers(-40, 41, (32, 32, 3)), 0, 255).astype(np.uint8))
                  for i in range(count)]  # fmt: skip
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("rgby"))})
        return datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(count)]}, features=features)

    datasets.DatasetDict({"train": split(24, 0), "validation": split(8, 1)}).save_to_disk(root / "data")
    return save_tiny_encoder(root / "encoder"), str(root / "data")


def _run(inputs, output_dir, *extra) -> dict:
    encoder_dir, data = inputs
    argv = ["--model_name_or_path", encoder_dir, "--dataset_name", data, "--output_dir", str(output_dir), "--mode",
            "lora", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--pooling", "cls",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--max_steps", "4",
            "--learning_rate", "1e-2", "--logging_steps", "1", "--seed", "0", *extra]  # fmt: skip
    return run_probe.main(argv)


def test_lora_resume_is_bitwise_exact_and_the_adapter_reproduces_the_merged_logits(inputs, tmp_path):
    straight = _run(inputs, tmp_path / "straight", "--save_strategy", "no")
    _run(inputs, tmp_path / "interrupted", "--save_strategy", "steps", "--save_steps", "2")
    shutil.copytree(tmp_path / "interrupted" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = _run(inputs, tmp_path / "resumed", "--save_strategy", "no", "--resume_from_checkpoint", "last")

    # the half-way checkpoint's adapter holds the head's BatchNorm statistics, moved by training
    checkpoint = load_file(tmp_path / "interrupted" / "checkpoint-2" / "adapter_model.safetensors")
    stats = [key for key in checkpoint if "norm.running_" in key]
    assert len(stats) == 2 and all(checkpoint[key].abs().sum() > 0 for key in stats if "mean" in key)

    # resume: same published weights (bitwise), adapter and metrics
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), name
    timing = {"train_loss", "train_runtime_s"}  # Trainer's train_loss averages the steps of this process only
    assert {k: v for k, v in straight["finetune"].items() if k not in timing} == {
        k: v for k, v in resumed["finetune"].items() if k not in timing
    }

    # the unmerged adapter beside the merged model: names its encoder and reproduces the merged logits
    out = tmp_path / "straight"
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == inputs[0]
    assert set(adapter_config["modules_to_save"]) == {"classifier", "norm"}
    merged = ProbeClassifier.from_pretrained(out).eval()
    adapted = PeftModel.from_pretrained(lora_base(out), out / "adapter").eval()
    pixels = torch.rand(6, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, logits = merged(pixels).logits, adapted(pixels).logits
    assert merged.norm.num_batches_tracked.item() == 4 and expected.abs().max() > 0
    assert (logits - expected).abs().max().item() < 1e-5


def test_adapter_of_an_encoder_with_a_final_norm_reloads_to_the_merged_logits(tmp_path, caplog):
    """DINOv3's final LayerNorm is also named `norm`: peft trains it too (said once), and the adapter keeps it."""
    torch.manual_seed(0)
    config = DINOv3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8)  # fmt: skip
    DINOv3ViTModel(config).save_pretrained(tmp_path / "encoder")
    encoder = load_encoder(tmp_path / "encoder")
    classifier = ProbeClassifier.from_encoder(encoder, "cls", {0: "a", 1: "b", 2: "c"}, head_norm="batchnorm")
    with caplog.at_level(logging.WARNING, logger="rae_hf.probe.finetune"):
        model = apply_lora(classifier, r=4)
    assert "encoder.backbone.norm" in caplog.text
    with torch.no_grad():  # stand-in for training: non-zero LoRA, moved head and norm, BatchNorm statistics updated
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
        model.train()(torch.rand(8, 3, 32, 32))
    save_finetuned(model, str(tmp_path / "out"), str(tmp_path / "encoder"))
    merged = ProbeClassifier.from_pretrained(tmp_path / "out").eval()
    adapted = PeftModel.from_pretrained(lora_base(tmp_path / "out"), tmp_path / "out" / "adapter").eval()
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, logits = merged(pixels).logits, adapted(pixels).logits
    assert merged.norm.num_batches_tracked.item() == 1
    assert (logits - expected).abs().max().item() < 1e-5
