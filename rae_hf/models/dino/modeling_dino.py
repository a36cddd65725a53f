"""DINO/DINOv2 self-distillation model: student and teacher ViT backbones with DINO (and iBOT) projection heads.

Like `configuration_dino.py`, this file imports nothing from `rae_hf` so that `save_pretrained` can copy it next to
the weights. Where the teacher lives: `model.teacher` mirrors `model.student` (same module names), receives no
gradients and is updated in place as an EMA of the student by the trainer; `save_backbone` exports the teacher's
backbone, the model one keeps after pretraining.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoModel, BitImageProcessor, PreTrainedModel
from transformers import initialization as init
from transformers.image_utils import PILImageResampling
from transformers.utils import ModelOutput

from .configuration_dino import DinoConfig
from .official_vit_layers import apply_official_forms, official_backbone_init

# Constructor arguments some backbones need to accept `bool_masked_pos` (and to skip an unused pooler).
BACKBONE_INIT_KWARGS = {"vit": {"use_mask_token": True, "add_pooling_layer": False}}


@dataclass
class DinoOutput(ModelOutput):
    """Head logits and tokens of one DINO step (B images; 2B global crops crop-major, NB local crops, M masked).

    Args:
        student_global_logits (`[2B, K]`): DINO-head logits of the student's (masked) global-crop CLS tokens.
        student_local_logits (`[NB, K]` or `None`): DINO-head logits of the student's local-crop CLS tokens.
        student_patch_logits (`[M, K_ibot]` or `None`): iBOT-head logits of the student's masked patch tokens.
        teacher_global_logits (`[2B, K]`): DINO-head logits of the teacher's (unmasked) global-crop CLS tokens.
        teacher_patch_logits (`[M, K_ibot]` or `None`): iBOT-head logits of the teacher's tokens at the masked patches.
        student_cls_tokens (`[2B, D]`): the student backbone's global-crop CLS tokens (after its final norm).
    """

    student_global_logits: torch.Tensor | None = None
    student_local_logits: torch.Tensor | None = None
    student_patch_logits: torch.Tensor | None = None
    teacher_global_logits: torch.Tensor | None = None
    teacher_patch_logits: torch.Tensor | None = None
    student_cls_tokens: torch.Tensor | None = None


class DinoHead(nn.Module):
    """MLP (Linear-GELU x (n-1), Linear to the bottleneck), L2 normalization, weight-normed prototypes (no bias)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for index in range(num_layers):
            layers.append(nn.Linear(dims[index], dims[index + 1]))
            if index < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.mlp(hidden_states)
        x = F.normalize(x, dim=-1, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)


class DinoPreTrainedModel(PreTrainedModel):
    config_class = DinoConfig
    config: DinoConfig
    base_model_prefix = "dino"
    main_input_name = "global_crops"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Heads (backbones init themselves): truncated-normal(0.02) linears with zero bias; the weight-normed
        prototypes get truncated-normal directions and norms g = 1."""
        if isinstance(module, nn.Linear) and not parametrize.is_parametrized(module):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, parametrize.ParametrizationList):
            init.trunc_normal_(module.original1, std=self.config.initializer_range)
            init.ones_(module.original0)


def _build_backbone(config) -> PreTrainedModel:
    """The backbone of `config`, with a mask token (a config field of some backbones, e.g. rae_hf's ViT variants)."""
    if getattr(config, "use_mask_token", None) is False:
        config = copy.deepcopy(config)
        config.use_mask_token = True
    return AutoModel.from_config(config, **BACKBONE_INIT_KWARGS.get(config.model_type, {}))


def _build_heads(config: DinoConfig) -> dict[str, nn.Module]:
    hidden = config.backbone_config.hidden_size
    heads = {
        "dino_head": DinoHead(
            hidden, config.head_out_dim, config.head_hidden_dim, config.head_bottleneck_dim, config.head_num_layers
        )
    }
    if config.use_ibot and config.ibot_separate_head:
        heads["ibot_head"] = DinoHead(
            hidden, config.ibot_out_dim, config.ibot_hidden_dim, config.ibot_bottleneck_dim, config.head_num_layers
        )
    return heads


class DinoModel(DinoPreTrainedModel):
    """Student and teacher (`nn.ModuleDict`s with `backbone`, `dino_head` and, when separate, `ibot_head`).

    The teacher's backbone has no drop path, is always in eval mode and never requires gradients. DINOv2 backbones
    follow the DINOv2 code's position-embedding interpolation, stochastic depth and fresh init unless the config
    asks for transformers' forms (`interpolate_offset`, `drop_path_mode`, `backbone_init`).
    `forward` takes normalized crops (see `rae_hf.data.multicrop`) and returns a [`DinoOutput`]; the losses,
    their temperatures and centring live in the trainer.
    """

    def __init__(self, config: DinoConfig):
        super().__init__(config)
        teacher_config = copy.deepcopy(config.backbone_config)
        if hasattr(teacher_config, "drop_path_rate"):
            teacher_config.drop_path_rate = 0.0
        self.student = nn.ModuleDict({"backbone": _build_backbone(config.backbone_config), **_build_heads(config)})
        self.teacher = nn.ModuleDict({"backbone": _build_backbone(teacher_config), **_build_heads(config)})
        self.teacher.requires_grad_(False)
        for part in (self.student, self.teacher):
            apply_official_forms(part["backbone"], config.interpolate_offset, config.drop_path_mode)
        parameters = inspect.signature(self.student["backbone"].forward).parameters
        self._backbone_kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in parameters else {}
        self.post_init()
        if config.backbone_init == "official":  # a loaded checkpoint replaces it
            official_backbone_init(self.student["backbone"])
        self.teacher.load_state_dict(self.student.state_dict())  # the teacher starts as the student

    def train(self, mode: bool = True) -> DinoModel:
        super().train(mode)
        self.teacher.eval()
        return self

    def _tokens(
        self, backbone: nn.Module, pixel_values: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS `[n, D]` and patch tokens `[n, P, D]` (register tokens dropped) after the backbone's final norm."""
        hidden = backbone(pixel_values=pixel_values, bool_masked_pos=masks, **self._backbone_kwargs).last_hidden_state
        return hidden[:, 0], hidden[:, self.config.num_prefix_tokens :]

    def _heads(
        self, heads: nn.ModuleDict, cls_tokens: torch.Tensor, patch_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """DINO-head logits of `cls_tokens`, iBOT logits of `patch_tokens` (one pass when the head is shared)."""
        if patch_tokens is None:
            return heads["dino_head"](cls_tokens), None
        if "ibot_head" in heads:
            return heads["dino_head"](cls_tokens), heads["ibot_head"](patch_tokens)
        logits = heads["dino_head"](torch.cat([cls_tokens, patch_tokens]))
        return logits[: cls_tokens.shape[0]], logits[cls_tokens.shape[0] :]

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        mask_indices: torch.Tensor | None = None,
        **kwargs,
    ) -> DinoOutput:
        """`masks [2B, P]` (bool) and `mask_indices` (flat indices of the masked patches) drive iBOT; without them
        (or with `use_ibot=False`) only the DINO logits are computed."""
        use_ibot = self.config.use_ibot and masks is not None and mask_indices is not None
        with torch.no_grad():
            teacher_cls, teacher_patches = self._tokens(self.teacher["backbone"], global_crops)
            teacher_masked = teacher_patches.flatten(0, 1).index_select(0, mask_indices) if use_ibot else None
            teacher_global, teacher_patch = self._heads(self.teacher, teacher_cls, teacher_masked)
        student_cls, student_patches = self._tokens(self.student["backbone"], global_crops, masks if use_ibot else None)
        student_masked = student_patches.flatten(0, 1).index_select(0, mask_indices) if use_ibot else None
        num_global = student_cls.shape[0]
        cls_tokens = student_cls
        if local_crops is not None:
            cls_tokens = torch.cat([student_cls, self._tokens(self.student["backbone"], local_crops)[0]])
        student_cls_logits, student_patch = self._heads(self.student, cls_tokens, student_masked)
        return DinoOutput(
            student_global_logits=student_cls_logits[:num_global],
            student_local_logits=student_cls_logits[num_global:] if local_crops is not None else None,
            student_patch_logits=student_patch,
            teacher_global_logits=teacher_global,
            teacher_patch_logits=teacher_patch,
            student_cls_tokens=student_cls,
        )

    def image_processor(self) -> BitImageProcessor:
        """Evaluation preprocessing of the backbone: bicubic resize (256/224 x crop), centre crop, view mean/std."""
        size = self.config.image_size
        return BitImageProcessor(
            do_resize=True,
            size={"shortest_edge": round(size * 256 / 224)},
            resample=PILImageResampling.BICUBIC,
            do_center_crop=True,
            crop_size={"height": size, "width": size},
            image_mean=list(self.config.image_mean),
            image_std=list(self.config.image_std),
        )

    def save_backbone(self, path: str) -> None:
        """Write the teacher backbone as a standalone `AutoModel`-loadable folder with its image processor."""
        self.teacher["backbone"].save_pretrained(path)
        self.image_processor().save_pretrained(path)


__all__ = ["DinoHead", "DinoModel", "DinoOutput", "DinoPreTrainedModel"]
