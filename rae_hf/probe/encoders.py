"""Frozen vision encoders for probing, behind one loader.

`load_encoder` accepts any HF vision model id or local path (DINOv2 with or without registers, DINOv3, ViT, ViT-MAE,
CLIP and SigLIP vision towers; a composite CLIP/SigLIP checkpoint gives its vision tower) and `RAEModel` checkpoints
(`model_type == "rae"`: its encoder and its preprocessing). Every encoder becomes a `ProbeEncoder` that maps [0, 1]
images to normalized token sequences and knows its CLS/register/patch token layout and its image size, mean and std.

Extension point: an architecture is supported once `AutoModel` can build it and `register_token_layout` has told
where its tokens and final norm are. The library's own ViT variants and DINO-pretrained backbones will plug in there.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from rae_hf.models.rae import RAEModel

__all__ = [
    "TOKEN_LAYOUTS",
    "ProbeEncoder",
    "ProbeEncoderOutput",
    "TokenLayout",
    "load_encoder",
    "register_token_layout",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class TokenLayout:
    """Where an architecture keeps its tokens.

    Attributes:
        final_norm: attribute of the backbone's final norm. It is applied to every returned block, as DINOv2's
            `get_intermediate_layers(norm=True)` does.
        has_cls_token: the sequence starts with a CLS token; `config.num_register_tokens` registers follow it.
        normed_last_hidden_state: whether `last_hidden_state` already went through `final_norm` (CLIP's does not).
        pooling_head: attribute of a pooling head whose `pooler_output` stands in for a missing CLS token (SigLIP's
            attention-pooling `head`); None when the backbone has a CLS token or no such head.
        image_mean / image_std: normalization used when the checkpoint ships no image-processor config.
        unused_modules: backbone attributes a probe never uses (set to None, so checkpoints without them load).
    """

    final_norm: str
    has_cls_token: bool = True
    normed_last_hidden_state: bool = True
    pooling_head: str | None = None
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    unused_modules: tuple[str, ...] = ()


TOKEN_LAYOUTS: dict[str, TokenLayout] = {
    "dinov2": TokenLayout("layernorm"),
    "dinov2_with_registers": TokenLayout("layernorm"),
    "dinov3_vit": TokenLayout("norm"),
    "vit": TokenLayout("layernorm", unused_modules=("pooler",)),  # the tanh pooler of supervised ViTs
    "vit_mae": TokenLayout("layernorm"),
    "clip_vision_model": TokenLayout(
        "post_layernorm",
        normed_last_hidden_state=False,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ),
    "siglip_vision_model": TokenLayout(
        "post_layernorm",
        has_cls_token=False,
        pooling_head="head",
        image_mean=HALF,
        image_std=HALF,
    ),
}
# Config values a probe needs: ViT-MAE keeps every patch (mask_ratio 0; the order is fixed in `ProbeEncoder.forward`).
CONFIG_OVERRIDES = {"vit_mae": {"mask_ratio": 0.0}}


def register_token_layout(model_type: str, layout: TokenLayout) -> None:
    """Make `load_encoder` accept another `AutoModel` architecture (`model_type` as in its config)."""
    TOKEN_LAYOUTS[model_type] = layout


def token_layout(model_type: str) -> TokenLayout:
    """The layout of `model_type`, or an error listing the supported ones."""
    if model_type not in TOKEN_LAYOUTS:
        raise ValueError(
            f"Encoders of type {model_type!r} are not supported for probing; supported: {sorted(TOKEN_LAYOUTS)} "
            "and RAE checkpoints. Add one with rae_hf.probe.register_token_layout."
        )
    return TOKEN_LAYOUTS[model_type]


@dataclass
class ProbeEncoderOutput(ModelOutput):
    """blocks: normalized token sequences `[B, L, C]` of the last blocks, earliest first (the last one is the
    encoder output); pooled_output: `[B, C]` pooled output standing in for a missing CLS token, or None."""

    blocks: tuple[torch.Tensor, ...] | None = None
    pooled_output: torch.Tensor | None = None


class ProbeEncoder(nn.Module):
    """A vision backbone with its preprocessing and token layout. Takes [0, 1] images of any size.

    Args:
        backbone: the HF vision model (`AutoModel` of a vision config).
        image_size: input side; images are resized to it (bicubic), then normalized with `image_mean`/`image_std`.
        latent_norm_eps: set for RAE encoders with latent statistics: the `latents_mean`/`latents_var` buffers
            `[C, h, w]` standardize the patch-token map in `latents`, as `RAEModel.encode` does.
        name_or_path: where it came from (reports only; the cache key uses the weights themselves).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        image_size: int,
        image_mean: tuple[float, ...] | list[float],
        image_std: tuple[float, ...] | list[float],
        latent_norm_eps: float | None = None,
        name_or_path: str | None = None,
    ):
        super().__init__()
        self.layout = token_layout(backbone.config.model_type)
        for name in self.layout.unused_modules:
            setattr(backbone, name, None)
        self.backbone = backbone
        self.image_size = int(image_size)
        self.name_or_path = name_or_path
        self.latent_norm_eps = latent_norm_eps
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size={image_size} must be a multiple of the patch size {self.patch_size}.")
        mean, std = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in (image_mean, image_std))
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)
        if latent_norm_eps is not None:
            shape = (self.hidden_size, self.grid_size, self.grid_size)
            self.register_buffer("latents_mean", torch.zeros(shape))
            self.register_buffer("latents_var", torch.ones(shape))
        parameters = inspect.signature(backbone.forward).parameters
        self._interpolate = "interpolate_pos_encoding" in parameters and self.native_image_size != self.image_size
        self._fingerprint: str | None = None

    # ----- layout -------------------------------------------------------------------------------------------------
    @property
    def config(self) -> PreTrainedConfig:
        return self.backbone.config

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_blocks(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def patch_size(self) -> int:
        patch = self.config.patch_size
        return int(patch[0] if isinstance(patch, (list, tuple)) else patch)

    @property
    def native_image_size(self) -> int:
        size = getattr(self.config, "image_size", self.image_size)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def grid_size(self) -> int:
        """Patch tokens per side at `image_size`."""
        return self.image_size // self.patch_size

    @property
    def num_register_tokens(self) -> int:
        return int(getattr(self.config, "num_register_tokens", 0) or 0)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens, in front of the patch tokens."""
        return int(self.layout.has_cls_token) + self.num_register_tokens

    @property
    def has_cls_feature(self) -> bool:
        """Whether a `cls` feature exists (a CLS token, or a pooled output standing in for it)."""
        return self.layout.has_cls_token or self._has_pooling_head()

    def _has_pooling_head(self) -> bool:
        head = self.layout.pooling_head
        return head is not None and getattr(self.backbone, head, None) is not None

    # ----- forward ------------------------------------------------------------------------------------------------
    def preprocess(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> bicubic resize to `image_size` -> mean/std normalization."""
        size = self.image_size
        if pixel_values.shape[-2:] != (size, size):
            pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bicubic", align_corners=False)
        return (pixel_values - self.image_mean) / self.image_std

    def forward(self, pixel_values: torch.Tensor, num_blocks: int = 1) -> ProbeEncoderOutput:
        """Normalized tokens of the last `num_blocks` blocks for [0, 1] images `[B, 3, H, W]`."""
        if not 1 <= num_blocks <= self.num_blocks:
            raise ValueError(f"num_blocks={num_blocks} must be in [1, {self.num_blocks}] for this encoder.")
        inputs = self.preprocess(pixel_values)
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        if self.model_type == "vit_mae":  # identity order: argsort of increasing "noise" keeps every patch in place
            num_patches = (inputs.shape[-2] // self.patch_size) * (inputs.shape[-1] // self.patch_size)
            kwargs["noise"] = torch.arange(num_patches, device=inputs.device).expand(inputs.shape[0], -1).float()
        outputs = self.backbone(pixel_values=inputs, output_hidden_states=num_blocks > 1, **kwargs)
        norm = getattr(self.backbone, self.layout.final_norm)
        last = outputs.last_hidden_state
        if not self.layout.normed_last_hidden_state:
            last = norm(last)
        earlier = tuple(norm(hidden) for hidden in outputs.hidden_states[-num_blocks:-1]) if num_blocks > 1 else ()
        pooled = outputs.pooler_output if self._has_pooling_head() else None
        return ProbeEncoderOutput(blocks=(*earlier, last), pooled_output=pooled)

    def cls_token(self, tokens: torch.Tensor, pooled_output: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, C]` CLS token of a block (or the pooled output for encoders without one)."""
        if self.layout.has_cls_token:
            return tokens[:, 0]
        if pooled_output is None:
            raise ValueError(f"{self.model_type} has no CLS token and no pooling head: use mean pooling.")
        return pooled_output

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, h*w, C]` patch tokens of a block (CLS and registers dropped)."""
        return tokens[:, self.num_prefix_tokens :]

    def latents(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a `[B, C, h, w]` map, standardized with the RAE's statistics when it has them."""
        grid = round(patch_tokens.shape[1] ** 0.5)
        latents = patch_tokens.transpose(1, 2).reshape(patch_tokens.shape[0], -1, grid, grid)
        if self.latent_norm_eps is not None:
            latents = (latents - self.latents_mean) / torch.sqrt(self.latents_var + self.latent_norm_eps)
        return latents

    # ----- identity -----------------------------------------------------------------------------------------------
    def weights_fingerprint(self) -> str:
        """Hash of every parameter and persistent buffer (computed once: the probe encoder is frozen)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            for name, tensor in sorted(self.state_dict().items()):
                tensor = tensor.detach().cpu().contiguous()
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def identity(self) -> dict:
        """What the encoder's features depend on: architecture, weights, preprocessing (JSON-serializable)."""
        config = self.config.to_dict()
        for key in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"):
            config.pop(key, None)
        return {
            "model_type": self.model_type,
            "config_digest": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16],
            "weights_fingerprint": self.weights_fingerprint(),
            "image_size": self.image_size,
            "image_mean": [round(v, 6) for v in self.image_mean.flatten().tolist()],
            "image_std": [round(v, 6) for v in self.image_std.flatten().tolist()],
            "latent_norm_eps": self.latent_norm_eps,
        }


def load_encoder(name_or_path: str, image_size: int | None = None, **from_pretrained_kwargs) -> ProbeEncoder:
    """Load a frozen, eval-mode `ProbeEncoder` from a hub id or a local folder.

    Args:
        name_or_path: any supported HF vision checkpoint (composite CLIP/SigLIP: the vision tower), or an RAE.
        image_size: encoder input size; default from the image-processor config (crop size), else the config's.
            An RAE's input size is fixed by its latent statistics and decoder: only its own value is accepted.
        from_pretrained_kwargs: passed to `from_pretrained` (`revision`, `cache_dir`, `token`, ...).
    """
    config = AutoConfig.from_pretrained(name_or_path, **from_pretrained_kwargs)
    if config.model_type == "rae":
        encoder = _encoder_from_rae(RAEModel.from_pretrained(name_or_path, **from_pretrained_kwargs), image_size)
    else:
        vision_config = getattr(config, "vision_config", None) or config
        layout = token_layout(vision_config.model_type)
        for key, value in CONFIG_OVERRIDES.get(vision_config.model_type, {}).items():
            setattr(vision_config, key, value)
        model_class = AutoModel._model_mapping[type(vision_config)]
        backbone, info = model_class.from_pretrained(
            name_or_path, config=vision_config, output_loading_info=True, **from_pretrained_kwargs
        )
        unused = tuple(f"{name}." for name in layout.unused_modules)
        missing = sorted(key for key in info["missing_keys"] if not key.startswith(unused))
        if missing:
            raise ValueError(f"Weights of {name_or_path} lack {missing}.")
        size, mean, std = _image_processor_settings(name_or_path, layout, from_pretrained_kwargs)
        size = image_size or size or _native_size(vision_config)
        encoder = ProbeEncoder(backbone, size, mean, std)
    encoder.name_or_path = name_or_path
    encoder.requires_grad_(False).eval()
    logger.info(
        "Encoder %s: %s, input %d px, %d prefix tokens (%d registers), %d blocks of width %d.",
        name_or_path,
        encoder.model_type,
        encoder.image_size,
        encoder.num_prefix_tokens,
        encoder.num_register_tokens,
        encoder.num_blocks,
        encoder.hidden_size,
    )
    return encoder


def _encoder_from_rae(rae: RAEModel, image_size: int | None) -> ProbeEncoder:
    """The RAE's encoder with its preprocessing and latent statistics (the decoder is left out)."""
    config = rae.config
    if image_size is not None and image_size != config.encoder_input_size:
        raise ValueError(
            f"image_size={image_size}, but this RAE's encoder takes {config.encoder_input_size} px (fixed by its "
            "latent statistics and decoder); leave --image_size unset."
        )
    backbone = rae.encoder
    _make_final_norm_affine(backbone, token_layout(backbone.config.model_type).final_norm)
    eps = config.latent_norm_eps if config.normalize_latents else None
    encoder = ProbeEncoder(
        backbone, config.encoder_input_size, config.encoder_image_mean, config.encoder_image_std, latent_norm_eps=eps
    )
    if eps is not None:
        encoder.latents_mean.copy_(rae.latents_mean)
        encoder.latents_var.copy_(rae.latents_var)
    return encoder


def _make_final_norm_affine(backbone: nn.Module, attribute: str) -> None:
    """Replace the RAE's scale-free final LayerNorm by the same function with unit weight and zero bias, so the
    backbone is a standard HF model again (its state dict loads into `AutoModel.from_config(config)`)."""
    old = getattr(backbone, attribute)
    if isinstance(old, nn.LayerNorm) and not old.elementwise_affine:
        setattr(backbone, attribute, nn.LayerNorm(old.normalized_shape, eps=old.eps))


def _image_processor_settings(
    name_or_path: str, layout: TokenLayout, kwargs: dict
) -> tuple[int | None, tuple[float, ...], tuple[float, ...]]:
    """Crop size and mean/std from the image-processor config; the layout's defaults when there is none."""
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError):
        return None, layout.image_mean, layout.image_std
    crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    size = crop.get("height") or crop.get("shortest_edge")
    return size, tuple(processor.image_mean), tuple(processor.image_std)


def _native_size(config: PreTrainedConfig) -> int:
    size = config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)
