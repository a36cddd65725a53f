"""No host sync in any trainer's training step (RAE with its discriminator step, JiT, DINO, probe fine-tuning,
pruning, DiT), checked on the CPU.

On a GPU, `.item()`, `.tolist()`, `.cpu()`, `bool(tensor)`, `int(tensor)`, boolean-mask indexing or `nonzero` make the
host wait for the device. On the CPU nothing waits, so a detector records where they would happen instead: a
`TorchDispatchMode` sees the ops that need the value on the host (`_local_scalar_dense`, behind `.item()`,
`bool()`, `int()`, `float()`; `nonzero`, `masked_select`, `unique`, boolean indexing), and `Tensor.tolist/cpu/numpy`
are wrapped (on CPU tensors they dispatch nothing). A call is charged to the Python line that made it when that line
is in rae_hf, transformers or accelerate (torch's own internals, such as the CPU step counter of a non-fused
optimizer, are not syncs on a GPU). `tests/gpu` repeats the check on CUDA with `torch.cuda.set_sync_debug_mode`.
"""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
from trainer_toys import METHODS, make_trainer

aten = torch.ops.aten
SYNC_OPS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
}
WATCHED = ("/rae_hf/", "/transformers/", "/accelerate/")
HERE = Path(__file__).resolve()
TORCH_WRAPPERS = ("/torch/utils/_python_dispatch", "/torch/_compile.py", "/torch/_dynamo/", "/torch/_tensor.py")

# (path fragment, function) -> why the host read is needed and cheap; keep this list short.
ALLOWED: dict[tuple[str, str], str] = {}


def _site() -> str | None:
    """`path:line function` of the innermost frame outside this file, if it is library code we watch."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if Path(frame.filename).resolve() == HERE or any(part in frame.filename for part in TORCH_WRAPPERS):
            continue
        if any(part in frame.filename for part in WATCHED):
            return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} {frame.name}"
        return None  # torch's own code (or the test): not a sync of ours
    return None


class SyncDetector(TorchDispatchMode):
    """Records the call sites of host reads of tensor values while active."""

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        boolean_index = func is aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        )
        if func in SYNC_OPS or boolean_index:
            site = _site()
            if site is not None:
                self.sites.append(f"{func.overloadpacket.__name__} at {site}")
        return func(*args, **(kwargs or {}))


def _wrap_conversions(monkeypatch, detector: SyncDetector, active: list[bool]) -> None:
    for name in ("tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        @functools.wraps(original)
        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            if active[0]:
                site = _site()
                if site is not None:
                    detector.sites.append(f"Tensor.{_name} at {site}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)


def _allowed(site: str) -> bool:
    return any(path in site and site.endswith(f" {function}") for path, function in ALLOWED)


def watch(trainer, monkeypatch) -> SyncDetector:
    """Run the detector inside `training_step`, the RAE discriminator step and the per-optimizer-step bookkeeping
    (`_maybe_log_save_evaluate`: with no log, evaluation or save due, it must not read anything back)."""
    detector, active = SyncDetector(), [False]
    _wrap_conversions(monkeypatch, detector, active)

    def watched(method):
        @functools.wraps(method)
        def run(*args, **kwargs):
            active[0] = True
            try:
                with detector:
                    return method(*args, **kwargs)
            finally:
                active[0] = False

        return run

    names = ["training_step", "_maybe_log_save_evaluate"]  # the step, and the per-step bookkeeping after it
    names += ["_discriminator_steps"] if hasattr(trainer, "_discriminator_steps") else []
    for name in names:
        monkeypatch.setattr(trainer, name, watched(getattr(trainer, name)))
    return detector


def test_detector_sees_item_bool_tolist_and_boolean_indexing(monkeypatch):
    """The detector itself: every kind of host read made from rae_hf code is recorded (from the test: not)."""
    from rae_hf.trainers import base_trainer

    detector, active = SyncDetector(), [True]
    _wrap_conversions(monkeypatch, detector, active)
    x = torch.arange(4.0)
    with detector:
        x.sum().item()  # the test's own line: not recorded
        # a line of library code (rae_hf): `_drain_metrics`-style reads are recorded
        code = compile("(x.sum().item(), bool(x.any()), x.tolist(), x[x > 1])", base_trainer.__file__, "eval")
        eval(code, {"x": x})
    kinds = [site.split(" at ")[0] for site in detector.sites]
    assert kinds.count("_local_scalar_dense") == 2 and "Tensor.tolist" in kinds and "index" in kinds, detector.sites
    assert all("base_trainer.py" in site for site in detector.sites)


@pytest.mark.parametrize("method", METHODS)
def test_training_step_makes_no_host_sync(method, tmp_path, monkeypatch):
    trainer = make_trainer(method, tmp_path, logging_steps=100)  # no log within the 3 steps
    detector = watch(trainer, monkeypatch)
    trainer.train()
    assert trainer.state.global_step == 3 and detector.ops > 100  # the steps ran under the detector
    found = sorted({site for site in detector.sites if not _allowed(site)})
    assert not found, f"{method}: host syncs in the training step:\n" + "\n".join(found)
