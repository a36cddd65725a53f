"""The shared frozen-backbone adapter (`rae_hf.models.backbone`, table in `rae_hf/models/rae/backbone_layouts.py`):
one table for RAE and probing, transformers' mean/std constants, clear errors for a missing folder or a text model."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    BertConfig,
    BertModel,
    CLIPVisionConfig,
    Dinov2Config,
    GPT2Config,
    GPT2Model,
    SiglipVisionConfig,
)
from transformers.utils.constants import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from rae_hf.models import backbone
from rae_hf.models.rae import RAEConfig, RAEModel, modeling_rae
from rae_hf.models.rae.backbone_layouts import TokenLayout, load_vision_config
from rae_hf.probe import encoders as probe_encoders
from rae_hf.probe import load_encoder

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
DECODER = {
    "decoder_hidden_size": 32,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 64,
    "decoder_patch_size": 8,
}


def test_one_token_layout_table_for_rae_and_probing():
    """RAE (also as remote code: same-folder module), the backbone adapter and probing share one table object."""
    assert backbone.TOKEN_LAYOUTS is modeling_rae.TOKEN_LAYOUTS is probe_encoders.TOKEN_LAYOUTS
    assert not hasattr(modeling_rae, "FINAL_NORM_ATTRIBUTE") and not hasattr(probe_encoders, "CONFIG_OVERRIDES")
    layout = TokenLayout("layernorm")
    try:
        probe_encoders.register_token_layout("my_vit", layout)
        assert modeling_rae.TOKEN_LAYOUTS["my_vit"] is layout
    finally:
        backbone.TOKEN_LAYOUTS.pop("my_vit", None)


def test_mean_std_come_from_transformers_constants():
    layouts = backbone.TOKEN_LAYOUTS
    assert layouts["dinov2"].image_mean == tuple(IMAGENET_DEFAULT_MEAN)
    assert layouts["siglip_vision_model"].image_mean == tuple(IMAGENET_STANDARD_MEAN)
    clip = layouts["clip_vision_model"]
    assert (clip.image_mean, clip.image_std) == (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD))
    config = RAEConfig(encoder_config=Dinov2Config(patch_size=14, **TINY), encoder_input_size=56, **DECODER)
    assert (config.encoder_image_mean, config.encoder_image_std) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    root = backbone.__file__.rsplit("/models/", 1)[0]
    for name in ("models/rae/configuration_rae.py", "models/rae/discriminator.py", "models/rae/backbone_layouts.py",
                 "probe/encoders.py", "convert/rae_diffusers.py"):  # fmt: skip
        source = open(f"{root}/{name}").read()
        assert "0.485" not in source and "0.4814" not in source, f"{name} keeps its own mean/std copy"


def test_rae_on_clip_normalizes_the_unnormed_last_hidden_state():
    """CLIP's last_hidden_state precedes its post_layernorm: the RAE applies that final norm (without affine)."""
    torch.manual_seed(0)
    clip = CLIPVisionConfig(image_size=32, patch_size=8, **TINY)
    model = RAEModel(RAEConfig(encoder_config=clip, encoder_input_size=32, **DECODER)).eval()
    with torch.no_grad():
        for param in model.encoder.parameters():
            param.add_(0.3 * torch.randn_like(param))
        images = torch.rand(2, 3, 32, 32)
        hidden = model.encoder(pixel_values=model.preprocess(images)).last_hidden_state
        expected = F.layer_norm(hidden, (32,), eps=clip.layer_norm_eps)[:, 1:]
        torch.testing.assert_close(model.encode_tokens(images), expected)
    assert not model.encoder.post_layernorm.elementwise_affine


def test_missing_local_folder_names_the_path(tmp_path):
    """Issue 9: a missing local model folder gave "Repo id must be in the form ..."."""
    missing = tmp_path / "runs" / "no-such-model"
    with pytest.raises(FileNotFoundError, match=r"encoder_name_or_path=.*no-such-model.*no local folder"):
        RAEModel.from_encoder_pretrained(str(missing))
    with pytest.raises(FileNotFoundError, match=r"model_name_or_path=.*no-such-model.*no local folder"):
        load_encoder(str(missing))
    with pytest.raises(FileNotFoundError, match=r"\./runs/missing"):
        load_vision_config("./runs/missing", "model_name_or_path")


def test_folder_without_config_names_the_argument(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"model_name_or_path=.*empty.*no config\.json"):
        load_encoder(str(tmp_path / "empty"))


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_text_model_as_encoder_is_refused_clearly(kind, tmp_path):
    """Issue 9: a BERT/GPT-2 checkpoint as encoder failed with `AttributeError: ... 'patch_size'`."""
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=64, max_position_embeddings=16, **TINY))
    else:
        model = GPT2Model(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / kind)
    with pytest.raises(ValueError, match=rf"encoder_name_or_path=.*'{kind}' model, not a vision encoder"):
        RAEModel.from_encoder_pretrained(str(tmp_path / kind))
    with pytest.raises(ValueError, match=rf"model_name_or_path=.*'{kind}' model, not a vision encoder"):
        load_encoder(str(tmp_path / kind))
    with pytest.raises(ValueError, match="encoder_config is a 'bert' config without patch_size"):
        RAEConfig(encoder_config=BertConfig(**TINY), **DECODER)


def test_unsupported_vision_type_for_probing_lists_the_supported(tmp_path):
    config = SiglipVisionConfig(image_size=32, patch_size=8, **TINY)
    AutoModel.from_config(config).save_pretrained(tmp_path / "siglip")
    encoder = load_encoder(str(tmp_path / "siglip"))
    assert encoder.model_type == "siglip_vision_model" and encoder.num_prefix_tokens == 0
    removed = backbone.TOKEN_LAYOUTS.pop("siglip_vision_model")
    try:
        with pytest.raises(ValueError, match=r"not a supported vision backbone; supported: \['clip_vision_model'"):
            load_encoder(str(tmp_path / "siglip"))
    finally:
        backbone.TOKEN_LAYOUTS["siglip_vision_model"] = removed
