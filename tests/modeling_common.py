"""`ModelTesterMixin`: the checks every rae_hf model passes (RAE now; JiT, ViT, DiT, ... inherit them).

Use it from a test module (`tests/` is on `sys.path` through `tests/conftest.py`):

    from modeling_common import ModelTesterMixin

    class TestJiTModel(ModelTesterMixin):
        model_class = JiTModel
        invalid_configs = (({"num_attention_heads": 0}, "num_attention_heads"),)

        def get_config(self, **overrides):          # a tiny config (seconds on CPU)
            return JiTConfig(**{**TINY, **overrides})

        def get_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:  # forward keyword arguments
            generator = torch.Generator().manual_seed(seed)
            return {"pixel_values": torch.rand(2, 3, 32, 32, generator=generator), ...}

Checks (each a test method):
- `test_save_load_round_trip`: `save_pretrained` -> `model_class.from_pretrained` (and `auto_class`): bit-identical
  outputs, safetensors weights, equal config.
- `test_config_dict_round_trip`: `to_dict` -> `from_dict` gives the same config.
- `test_remote_code_without_package`: the saved folder carries its own code (`auto_map`) and loads with
  `trust_remote_code=True` in a subprocess where the package cannot be imported (blocked in `sys.modules`, the
  repository removed from `sys.path`), giving bit-identical outputs. Set `test_remote_code = False` to skip.
- `test_gradient_checkpointing_same_gradients`: with activation checkpointing on, the checkpoint function is really
  called and outputs/gradients equal those without it (train mode, same seed). Skipped when the model does not
  support it.
- `test_invalid_configs_raise`: every `(overrides, argument)` of `invalid_configs` raises a `ValueError` at
  construction whose message names `argument`.

Hooks to override: `make_model` (e.g. randomize frozen weights), `output_tensors` (which outputs to compare),
`training_loss` (scalar for the gradient check), tolerances `grad_atol` / `grad_rtol`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

REPO_ROOT = Path(__file__).resolve().parents[1]
VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype")


def comparable_config(config: PreTrainedConfig) -> dict:
    """`config.to_dict()` without the keys that legitimately change on save (version, name, auto map, dtype)."""
    values = json.loads(config.to_json_string(use_diff=False))

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE_CONFIG_KEYS}
        return value

    return strip(values)


class ModelTesterMixin:
    """Generic model checks; subclasses set `model_class` and implement `get_config` and `get_inputs`."""

    model_class: ClassVar[type[PreTrainedModel]]
    auto_class: ClassVar[type | None] = AutoModel  # also loaded through it (None: skip); used for remote code
    test_remote_code: ClassVar[bool] = True
    invalid_configs: ClassVar[tuple[tuple[dict, str], ...]] = ()
    grad_atol: ClassVar[float] = 1e-6
    grad_rtol: ClassVar[float] = 1e-5

    # ----- to implement / override -----------------------------------------------------------------------------
    def get_config(self, **overrides) -> PreTrainedConfig:
        """A tiny config; `overrides` replace its fields."""
        raise NotImplementedError

    def get_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Keyword arguments of `forward` (tensors only), fixed by `seed`."""
        raise NotImplementedError

    def make_model(self, seed: int = 0, **overrides) -> PreTrainedModel:
        """A model of `get_config(**overrides)` initialized under `seed`, in eval mode."""
        torch.manual_seed(seed)
        return self.model_class(self.get_config(**overrides)).eval()

    def output_tensors(self, outputs: ModelOutput | tuple | torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of a forward output to compare, by name."""
        if isinstance(outputs, torch.Tensor):
            return {"output": outputs}
        if isinstance(outputs, ModelOutput):
            return {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}
        return {f"output_{i}": v for i, v in enumerate(outputs) if isinstance(v, torch.Tensor)}

    def training_loss(self, outputs: ModelOutput | tuple | torch.Tensor) -> torch.Tensor:
        """A scalar depending on every floating output (the gradient-checkpointing check backpropagates it)."""
        tensors = [t for t in self.output_tensors(outputs).values() if t.is_floating_point() and t.requires_grad]
        assert tensors, "no differentiable output: override training_loss"
        return sum(t.float().square().mean() for t in tensors)

    # ----- helpers ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _outputs(self, model: PreTrainedModel, seed: int = 0) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.output_tensors(model(**self.get_inputs(seed))).items()}

    @staticmethod
    def _assert_equal(
        actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str, atol: float = 0.0
    ) -> None:
        """Bitwise equal (`atol=0`), or within `atol` where the computation legitimately differs (another process
        with another thread count sums in another order)."""
        assert actual.keys() == expected.keys(), f"{what}: outputs {sorted(actual)} vs {sorted(expected)}"
        for name, value in expected.items():
            same = torch.equal(actual[name], value) if atol == 0 else torch.allclose(actual[name], value, 0, atol)
            assert same, f"{what}: {name} differs (max {_max_difference(actual[name], value)})"

    # ----- tests ------------------------------------------------------------------------------------------------
    def test_save_load_round_trip(self, tmp_path):
        model = self.make_model()
        expected = self._outputs(model)
        model.save_pretrained(tmp_path / "model")
        assert (tmp_path / "model" / "model.safetensors").is_file(), "weights must be saved as safetensors"
        loaders = [self.model_class] + ([self.auto_class] if self.auto_class is not None else [])
        for loader in loaders:
            loaded = loader.from_pretrained(tmp_path / "model").eval()
            assert isinstance(loaded, self.model_class), f"{loader.__name__} built {type(loaded).__name__}"
            assert comparable_config(loaded.config) == comparable_config(model.config)
            self._assert_equal(self._outputs(loaded), expected, f"{loader.__name__}.from_pretrained")

    def test_config_dict_round_trip(self):
        config = self.get_config()
        again = type(config).from_dict(config.to_dict())
        assert comparable_config(again) == comparable_config(config)

    def test_remote_code_without_package(self, tmp_path):
        if not self.test_remote_code or self.auto_class is None:
            pytest.skip("remote code not tested for this model")
        model = self.make_model()
        expected = self._outputs(model)
        model.save_pretrained(tmp_path / "model")
        config = json.loads((tmp_path / "model" / "config.json").read_text())
        auto_name = self.auto_class.__name__
        assert auto_name in config.get("auto_map", {}), (
            f"config.json lacks auto_map[{auto_name!r}]: call register_for_auto_class"
        )
        save_file(self.get_inputs(0), tmp_path / "inputs.safetensors")
        package = self.model_class.__module__.split(".")[0]
        script = textwrap.dedent(
            f"""
            import os
            import sys
            sys.path = [p for p in sys.path if os.path.abspath(p or ".") != {str(REPO_ROOT)!r}]  # no repository
            sys.modules[{package!r}] = None  # an import of the package now fails
            import torch
            import transformers
            from safetensors.torch import load_file, save_file
            model = transformers.{auto_name}.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
            module = type(model).__module__
            assert not module.startswith({package!r}), module
            inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
            with torch.no_grad():
                outputs = model(**inputs)
            tensors = {{k: v.contiguous() for k, v in outputs.items() if isinstance(v, torch.Tensor)}}
            save_file(tensors, {str(tmp_path / "outputs.safetensors")!r}, metadata={{"module": module}})
            """
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-4000:]
        with safe_open(tmp_path / "outputs.safetensors", "pt") as handle:
            module = handle.metadata()["module"]
        assert module.startswith("transformers_modules"), module
        actual = load_file(tmp_path / "outputs.safetensors")
        # the subprocess runs with 1 thread, this one maybe with more: reductions may round differently
        self._assert_equal(actual, {k: v for k, v in expected.items() if k in actual}, "remote code", atol=1e-5)
        assert actual, "the remote-code model returned no tensors"

    def test_gradient_checkpointing_same_gradients(self, monkeypatch):
        model = self.make_model()
        if not model.supports_gradient_checkpointing:
            pytest.skip(f"{type(model).__name__} does not support gradient checkpointing")
        calls: list[int] = []
        original = torch.utils.checkpoint.checkpoint

        def counting(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
        monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting)
        checkpointed = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enable = getattr(checkpointed, "activation_checkpointing_enable", None)
            (enable or checkpointed.gradient_checkpointing_enable)()
        results = []
        for candidate in (model, checkpointed):
            candidate.train()
            torch.manual_seed(1234)  # same training-time randomness (noise, dropout) for both
            outputs = candidate(**self.get_inputs(0))
            self.training_loss(outputs).backward()
            grads = {n: p.grad.detach().clone() for n, p in candidate.named_parameters() if p.grad is not None}
            results.append((self.output_tensors(outputs), grads))
            if candidate is model:
                assert not calls, "checkpointing ran before it was enabled"
        assert calls, "activation checkpointing was enabled but no layer was checkpointed"
        (plain_out, plain_grads), (ckpt_out, ckpt_grads) = results
        for name, value in plain_out.items():
            torch.testing.assert_close(ckpt_out[name], value, atol=self.grad_atol, rtol=self.grad_rtol, msg=name)
        assert plain_grads, "no parameter received a gradient"
        assert plain_grads.keys() == ckpt_grads.keys()
        for name, grad in plain_grads.items():
            torch.testing.assert_close(ckpt_grads[name], grad, atol=self.grad_atol, rtol=self.grad_rtol, msg=name)

    def test_invalid_configs_raise(self):
        if not self.invalid_configs:
            pytest.skip("no invalid configs listed")
        for overrides, argument in self.invalid_configs:
            with pytest.raises(ValueError) as error:
                self.get_config(**overrides)
            assert argument in str(error.value), f"{overrides}: message does not name {argument!r}: {error.value}"


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    return f"{(a.double() - b.double()).abs().max().item():.3g}"
