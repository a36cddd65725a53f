"""The RAE model card (`rae_hf.hub`): sizes of the actual model, recipe values as typed, informative metrics only."""

import re
from types import SimpleNamespace

import pytest
from conftest import tiny_rae
from transformers import Dinov2Config, TrainingArguments
from transformers.trainer_utils import SchedulerType

from rae_hf.hub import format_value, informative_metrics, rae_model_card, write_model_card
from rae_hf.models.rae import RAEConfig


@pytest.fixture
def training_args(tmp_path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path),
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": 1e-6},
        learning_rate=2e-4,
        report_to="none",
        use_cpu=True,
    )


def test_usage_snippet_uses_the_model_sizes():
    """Issue: the snippet said [B, 3, 256, 256] for a 32 px model. It now gives the model's output and latent."""
    model = tiny_rae()  # 32 px in, 4x4 latent grid of 32 channels, decoder patch 8 -> 32 px out
    card = rae_model_card(model, "tiny")
    assert "# [B, 3, 32, 32] in [0, 1]" in card and "256" not in card
    assert "-> [B, 32, 4, 4]" in card
    wide = tiny_rae(decoder_patch_size=16)  # same latent grid, 64 px out
    assert "# [B, 3, 64, 64] in [0, 1]" in rae_model_card(wide, "tiny")


def test_recipe_table_prints_values_as_typed(training_args):
    """Issue: the recipe table printed `SchedulerType.COSINE_WITH_MIN_LR`."""
    assert isinstance(training_args.lr_scheduler_type, SchedulerType)
    card = rae_model_card(tiny_rae(), "tiny", training_args)
    assert "| lr_scheduler_type | cosine_with_min_lr |" in card
    assert "SchedulerType" not in card
    assert "| learning_rate | 0.0002 |" in card
    assert format_value(SchedulerType.LINEAR) == "linear" and format_value(0.123456) == "0.1235"


def test_metrics_table_drops_non_informative_entries(training_args, tmp_path):
    """Issue: the metrics table listed `total_flos 0`. Bookkeeping entries are dropped, measured metrics kept."""
    metrics = {"total_flos": 0.0, "epoch": 3.0, "step": 12, "train_loss": 0.25, "eval_rfid": 1.5, "lr": None}
    card = rae_model_card(tiny_rae(), "tiny", training_args, metrics)
    table = card.split("## Metrics")[1].split("## Usage")[0]
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \|$", table, flags=re.MULTILINE)
    assert rows == [("metric", "value"), ("eval_rfid", "1.5"), ("train_loss", "0.25")]
    assert informative_metrics({"total_flos": 0, "eval_total_flos": 0}) == {}
    assert "## Metrics" not in rae_model_card(tiny_rae(), "tiny", metrics={"total_flos": 0})
    path = write_model_card(str(tmp_path), card)
    assert open(path).read() == card


def test_decoder_row_names_the_preset_only_when_the_sizes_are_its_own():
    """The card reads its sizes from the config; a preset with overridden sizes is reported as custom."""
    encoder = Dinov2Config(patch_size=14, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    preset = SimpleNamespace(config=RAEConfig(encoder_config=encoder, decoder_preset="ViT-S"))
    assert "| decoder | ViT ViT-S: hidden 384, 12 layers, 6 heads, MLP 1536, patch 16 |" in rae_model_card(preset, "x")
    changed = SimpleNamespace(
        config=RAEConfig(encoder_config=encoder, decoder_preset="ViT-S", decoder_num_hidden_layers=1)
    )
    assert "ViT custom (from ViT-S): hidden 384, 1 layers, 6 heads" in rae_model_card(changed, "x")
