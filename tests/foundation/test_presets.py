"""One preset rule (`rae_hf.models.presets.apply_preset`) for every config: a preset fills only what the caller left
unset, explicit arguments win, an unknown name is an error listing the known ones, and configs saved before a
preset field existed still load with the same values."""

from __future__ import annotations

import importlib
import inspect
import json
import re

import pytest

from rae_hf.models import presets
from rae_hf.models.dino import DINO_BACKBONE_SIZES, DinoConfig
from rae_hf.models.jit import JIT_PRESETS, JiTConfig
from rae_hf.models.rae import DECODER_PRESETS, RAEConfig
from rae_hf.models.vit import VIT_PRESETS, ViTVariantConfig
from rae_hf.models.vit.configuration_vit_variant import DEFAULT_SIZES
from rae_hf.trainers.probe_config import ProbeTrainingArguments

# (config class module, class, preset argument, table of presets, how to read a filled field back)
CASES = {
    "rae": ("rae_hf.models.rae.configuration_rae", "RAEConfig", "decoder_preset", "DECODER_PRESETS", "decoder_"),
    "vit": ("rae_hf.models.vit.configuration_vit_variant", "ViTVariantConfig", "preset", "VIT_PRESETS", ""),
    "jit": ("rae_hf.models.jit.configuration_jit", "JiTConfig", "preset", "JIT_PRESETS", ""),
    "dino": ("rae_hf.models.dino.configuration_dino", "DinoConfig", "backbone_preset", "DINO_BACKBONE_SIZES", None),
    "dit": ("rae_hf.models.dit.configuration_dit", "DiTDHConfig", "preset", "DITDH_PRESETS", ""),
}


def load_case(name: str):
    module_name, class_name, argument, table, prefix = CASES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        pytest.skip(f"{module_name} does not exist")
    return module, getattr(module, class_name), argument, getattr(module, table), prefix


def filled(config, prefix: str | None, field: str):
    """The value a preset gave `field` (DINO: the backbone's field)."""
    return getattr(config.backbone_config, field) if prefix is None else getattr(config, prefix + field)


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_uses_the_one_apply_preset(name):
    """The config module holds a verbatim copy of `apply_preset` (checked by test_model_copies) and the class calls
    it: no second preset rule."""
    module, cls, _, _, _ = load_case(name)
    assert "# Copied from rae_hf.models.presets.apply_preset" in inspect.getsource(module)
    assert inspect.getsource(module.apply_preset) == inspect.getsource(presets.apply_preset)
    assert "apply_preset(" in inspect.getsource(cls)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_preset_fills_and_explicit_arguments_win(name):
    _, cls, argument, table, prefix = load_case(name)
    for preset, values in table.items():
        config = cls(**{argument: preset})
        assert {field: filled(config, prefix, field) for field in values} == values, preset
    preset = sorted(table)[-1]
    field = "num_attention_heads"  # 1 head: valid in every config
    explicit = {argument: preset}
    if prefix is None:
        explicit["backbone_config"] = {"model_type": "dinov2", field: 1}
    else:
        explicit[prefix + field] = 1
    config = cls(**explicit)
    assert filled(config, prefix, field) == 1
    other = next(f for f in table[preset] if f != field)
    assert filled(config, prefix, other) == table[preset][other]


@pytest.mark.parametrize("name", sorted(CASES))
def test_unknown_preset_lists_the_known_names(name):
    _, cls, argument, table, _ = load_case(name)
    with pytest.raises(ValueError, match=re.escape(argument)) as error:
        cls(**{argument: "no-such-preset"})
    assert all(repr(known) in str(error.value) for known in table)


def test_defaults_are_named_presets():
    """A config given neither a preset nor sizes gets a documented default, never a hidden one."""
    vit = ViTVariantConfig()
    assert {field: getattr(vit, field) for field in DEFAULT_SIZES} == DEFAULT_SIZES
    assert DEFAULT_SIZES == {k: v for k, v in VIT_PRESETS["vit_base_imagenet"].items() if k != "num_labels"}
    assert "ViT-B/16 at 224" in ViTVariantConfig.__doc__ and vit.num_labels == 2 and vit.preset is None
    jit = JiTConfig()
    assert {field: getattr(jit, field) for field in JIT_PRESETS["JiT-B/16"]} == JIT_PRESETS["JiT-B/16"]
    rae = RAEConfig()
    assert rae.decoder_hidden_size == DECODER_PRESETS["ViT-XL"]["hidden_size"]
    assert DinoConfig().backbone_config.hidden_size == DINO_BACKBONE_SIZES["small"]["hidden_size"]


def test_preset_also_names_the_vit_label_count():
    assert ViTVariantConfig(preset="vit_tiny").num_labels == 10
    assert ViTVariantConfig(preset="vit_tiny", num_labels=100).num_labels == 100


def test_jit_from_preset_is_the_same_rule():
    assert JiTConfig.from_preset("JiT-L/32", image_size=None).to_dict() == JiTConfig(preset="JiT-L/32").to_dict()
    config = JiTConfig.from_preset("JiT-B/16", patch_size=8, image_size=128)
    assert (config.patch_size, config.image_size, config.hidden_size) == (8, 128, 768)


def test_dino_preset_refuses_a_built_backbone():
    with pytest.raises(ValueError, match="backbone_preset"):
        DinoConfig(backbone_preset="base", backbone_config=DinoConfig().backbone_config)


@pytest.mark.parametrize("name", ["vit", "jit"])
def test_configs_saved_before_the_preset_rule_still_load(name, tmp_path):
    """A config.json written before the preset field existed (no `preset` key, every size stored) loads unchanged."""
    config = {"vit": lambda: ViTVariantConfig(preset="vit_tiny"), "jit": lambda: JiTConfig(preset="JiT-H/32")}[name]()
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.pop("preset")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = type(config).from_pretrained(tmp_path)
    expected = {k: v for k, v in config.to_dict().items() if k not in ("preset", "transformers_version")}
    assert {k: v for k, v in loaded.to_dict().items() if k in expected} == expected


def test_probe_protocols_follow_the_rule():
    """The probe protocols are presets of the training arguments: explicit values win in every mode."""
    args = ProbeTrainingArguments(output_dir="unused", protocol="mae", head_norm="none", report_to="none")
    assert (args.head_norm, args.head_optimizer, args.num_train_epochs) == ("none", "lars", 90.0)
    args.resolve_defaults("full")
    assert (args.layer_decay, args.learning_rate) == (0.75, 2e-4)
    assert args.learning_rates is not ProbeTrainingArguments(output_dir="unused", report_to="none").learning_rates
