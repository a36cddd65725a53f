"""ImageNet-pretrained weights for the ViT variants from timm (`timm/vit_*`) or transformers (`google/vit-*`)
checkpoints, with the patch embedding and position embedding resized to the target model.

timm is not a dependency: the two resampling steps are short. The patch kernel is resized with the pseudo-inverse
of the bicubic resize matrix (FlexiViT's PI-resize, what `timm.layers.resample_patch_embed` does), so a kernel
applied to a resized patch gives (least squares) the old response; the position grid is resized bicubically.
The classifier head is kept only when its shape matches (ImageNet -> CIFAR heads start from scratch).
"""

from __future__ import annotations

import json
import logging
import os
import re

import torch
import torch.nn.functional as F

from ..checkpoint_io import read_checkpoint, resolve_file, select_state_dict
from .configuration_vit_variant import ViTVariantConfig

logger = logging.getLogger(__name__)

# Default source per preset: timm AugReg checkpoints (IN-21k pretrained, IN-1k fine-tuned; mean/std 0.5).
PRETRAINED_SOURCES: dict[str, str] = {
    "vit_small": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "vit_small_imagenet": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_imagenet": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "vit_large_imagenet": "timm/vit_large_patch16_224.augreg_in21k_ft_in1k",
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Hub layout (`encoder.layer.N...attention.attention.query`) and transformers 5 module names (`layers.N...q_proj`).
_HF_LAYER = re.compile(r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_HF_QKV = re.compile(r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")
_HF_LAYER_NAMES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV_PARTS = {"query": "query", "key": "key", "value": "value", "q": "query", "k": "key", "v": "value"}
_HF_TOP_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.mask_token": "mask_token",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def default_source(preset: str | None) -> str:
    """The hub checkpoint `--pretrained` loads for `preset`; a clear error for presets without weights."""
    if preset not in PRETRAINED_SOURCES:
        raise ValueError(
            f"No pretrained weights exist for preset {preset!r} (vit_tiny: 192 wide, 9 blocks, no public checkpoint); "
            f"presets with weights: {sorted(PRETRAINED_SOURCES)}. Train from scratch or pass --pretrained_source."
        )
    return PRETRAINED_SOURCES[preset]


def read_pretrained(source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, its config.json or {}) of a local weights file, a local folder or a hub repo (safetensors
    preferred), read by the shared checkpoint reader (`rae_hf.models.checkpoint_io`: nothing is executed)."""
    if os.path.isfile(source):
        path, config_path = source, os.path.join(os.path.dirname(source), "config.json")
    else:
        path = next((found for found in (resolve_file(source, name) for name in WEIGHT_FILES) if found), None)
        if path is None:
            raise FileNotFoundError(f"No {' or '.join(WEIGHT_FILES)} in {source!r} (a folder or a hub repo).")
        config_path = resolve_file(source, "config.json")
    state = select_state_dict(read_checkpoint(path), path, candidates=("state_dict", "model"))
    config = {}
    if config_path and os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
    return state, config


def checkpoint_format(state: dict[str, torch.Tensor]) -> str:
    """`"timm"` (also this library's own names) or `"transformers"` (google/vit-*), from the parameter names."""
    keys = list(state)
    if any(k.endswith("blocks.0.attn.qkv.weight") for k in keys):
        return "timm"
    if any(k.endswith(("layer.0.attention.attention.query.weight", "layers.0.attention.q_proj.weight")) for k in keys):
        return "transformers"
    raise ValueError("Unrecognized checkpoint: neither timm (blocks.N.attn.qkv) nor transformers ViT parameter names.")


def transformers_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers `ViTModel` / `ViTForImageClassification` state dict to timm names (q, k, v fused)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _HF_LAYER.match(key)
        if match:
            index, rest = int(match.group(1)), match.group(2)
            part = _HF_QKV.match(rest)
            if part:
                which = _QKV_PARTS[part.group(1) or part.group(2)]
                qkv.setdefault((index, part.group(3)), {})[which] = value
                continue
            module, kind = rest.rsplit(".", 1)
            if module in _HF_LAYER_NAMES:
                out[f"blocks.{index}.{_HF_LAYER_NAMES[module]}.{kind}"] = value
            continue
        name = key.removeprefix("vit.")
        if name in _HF_TOP_NAMES:
            out[_HF_TOP_NAMES[name]] = value
    for (index, kind), parts in qkv.items():
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def to_timm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported checkpoint as a timm-named state dict (this library's `vit.` prefix removed)."""
    if checkpoint_format(state) == "transformers":
        return transformers_to_timm(state)
    return {k.removeprefix("vit."): v for k, v in state.items()}


def resample_patch_embed(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a patch kernel `[D, C, p, p]` to `[D, C, size, size]` by PI-resize (pseudo-inverse of bicubic)."""
    old = weight.shape[-1]
    if old == size:
        return weight
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    matrix = resized.reshape(old * old, size * size)  # row i = resize(e_i): the transposed resize matrix
    flat = weight.to(torch.float64).reshape(-1, old * old).T  # [old*old, D*C]
    new = torch.linalg.pinv(matrix) @ flat
    return new.T.reshape(*weight.shape[:2], size, size).to(weight.dtype)


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize `[1, 1 + g*g, D]` position embeddings (cls first) to a `grid` x `grid` patch grid, bicubic."""
    old = math_isqrt(pos_embed.shape[1] - 1)
    if old == grid:
        return pos_embed
    patches = pos_embed[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], patches], dim=1)


def math_isqrt(n: int) -> int:
    """Side of a square grid of `n` patches (error when not square)."""
    side = round(n**0.5)
    if side * side != n:
        raise ValueError(f"Position embedding with {n} patch positions is not a square grid.")
    return side


def config_from_checkpoint(state: dict[str, torch.Tensor], config: dict, **overrides) -> ViTVariantConfig:
    """The `ViTVariantConfig` of a checkpoint at its own resolution (for exact comparisons with the source)."""
    timm_state = to_timm_names(state)
    hidden = timm_state["cls_token"].shape[-1]
    patch = timm_state["patch_embed.proj.weight"].shape[-1]
    grid = math_isqrt(timm_state["pos_embed"].shape[1] - 1)
    depth = len({k.split(".")[1] for k in timm_state if k.startswith("blocks.")})
    heads = config.get("num_attention_heads") or config.get("model_args", {}).get("num_heads") or hidden // 64
    values = dict(
        image_size=grid * patch,
        patch_size=patch,
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=timm_state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in timm_state,
        layer_norm_eps=config.get("layer_norm_eps", 1e-6),
        num_labels=timm_state["head.weight"].shape[0] if "head.weight" in timm_state else 0,
    )
    mean, std = _source_normalization(config)
    if mean is not None:
        values.update(image_mean=mean, image_std=std)
    values.update(overrides)
    return ViTVariantConfig(**values)


def _source_normalization(config: dict) -> tuple[list[float] | None, list[float] | None]:
    """Image mean/std recorded in a timm config.json (`pretrained_cfg`), else None."""
    pretrained = config.get("pretrained_cfg", {})
    if "mean" in pretrained and "std" in pretrained:
        return list(pretrained["mean"]), list(pretrained["std"])
    if config.get("model_type") == "vit":  # google/vit-* image processors normalize with 0.5 / 0.5
        return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    return None, None


def load_pretrained_weights(model: torch.nn.Module, source: str) -> dict[str, list[str]]:
    """Load a timm / transformers ViT checkpoint into a `ViTVariantModel` or `...ForImageClassification`.

    Patch and position embeddings are resized to the model; the head is loaded only when its shape matches.
    Every other tensor must exist with the right shape (a clear error otherwise). Returns `{"resized": [...],
    "skipped": [...]}`. The model's config gets the source's image mean/std when the checkpoint records them.
    """
    state, source_config = read_pretrained(source)
    timm_state = to_timm_names(state)
    backbone = getattr(model, "vit", model)
    prefix = "vit." if backbone is not model else ""
    config = backbone.config
    resized, skipped = [], []
    for key in ("patch_embed.proj.weight", "pos_embed"):
        if key not in timm_state:
            raise KeyError(f"{source}: the checkpoint has no {key!r}.")
    if timm_state["patch_embed.proj.weight"].shape[-1] != config.patch_size:
        timm_state["patch_embed.proj.weight"] = resample_patch_embed(
            timm_state["patch_embed.proj.weight"], config.patch_size
        )
        resized.append("patch_embed.proj.weight")
    grid = config.image_size // config.patch_size
    if timm_state["pos_embed"].shape[1] != grid * grid + 1:
        timm_state["pos_embed"] = resample_pos_embed(timm_state["pos_embed"], grid)
        resized.append("pos_embed")
    target = model.state_dict()
    loaded = {}
    for key, value in timm_state.items():
        name = key if key.startswith("head.") else prefix + key
        if name not in target or (key.startswith("head.") and target[name].shape != value.shape):
            skipped.append(key)
            continue
        if target[name].shape != value.shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)}, the model needs {tuple(target[name].shape)}."
            )
        loaded[name] = value
    missing = [k for k in target if k not in loaded and not k.startswith("head.") and "mask_token" not in k]
    if missing:
        raise KeyError(f"{source} lacks {len(missing)} tensors the model needs, e.g. {missing[:5]}.")
    model.load_state_dict(loaded, strict=False)
    mean, std = _source_normalization(source_config)
    if mean is not None:
        config.image_mean, config.image_std = mean, std
    if skipped:
        logger.info("Pretrained %s: kept the model's own %s (shape differs or unused).", source, skipped)
    return {"resized": resized, "skipped": skipped}
