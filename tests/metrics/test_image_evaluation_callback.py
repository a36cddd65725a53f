"""`ImageEvaluationCallback`: any evaluate function on a cadence, the best value logged and kept across a resume
(registered trainer state), sample grids."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn

from rae_hf.callbacks import ImageEvaluationCallback
from rae_hf.trainers.base_config import BaseTrainingArguments
from rae_hf.trainers.base_trainer import BaseTrainer


class ScalarModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values: torch.Tensor, **unused) -> dict:
        return {"loss": (pixel_values.mean() - self.value).square()}


class Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": torch.full((3, 4, 4), index / 8)}


class Scores:
    """An evaluate function returning the next of `values` (and checking it runs in eval mode without grad)."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, model: nn.Module) -> dict[str, float]:
        assert not model.training and not torch.is_grad_enabled()
        self.calls += 1
        return {"fid": self.values.pop(0), "num_samples": 10}


def make_trainer(output_dir, scores: Scores, max_steps: int, **callback_kwargs) -> tuple[BaseTrainer, object]:
    args = BaseTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=max_steps,
        learning_rate=0.1,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_steps=3,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = BaseTrainer(model=ScalarModel(), args=args, train_dataset=Images())
    grid = torch.zeros(3, 6, 6)
    callback = ImageEvaluationCallback(
        trainer, scores, best_metric="fid", eval_steps=1, at_epoch_end=False, sample_every=2,
        grid_fn=lambda model: grid, **callback_kwargs,
    )  # fmt: skip
    trainer.add_callback(callback)
    trainer.register_state("image_evaluation", callback)
    return trainer, callback


def evaluations(trainer: BaseTrainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "eval_fid" in entry]


def test_best_value_is_logged_and_kept_across_resume(tmp_path):
    first, callback = make_trainer(tmp_path / "a", Scores([5.0, 3.0, 4.0]), max_steps=3)
    first.train()
    logged = evaluations(first)
    assert [e["eval_fid"] for e in logged] == [5.0, 3.0, 4.0]
    assert [e["eval_fid_best"] for e in logged] == [5.0, 3.0, 3.0]
    assert all(e["eval_num_samples"] == 10 for e in logged)
    assert sorted(p.name for p in (tmp_path / "a" / "samples").iterdir()) == ["step_0000002.png", "step_0000003.png"]
    assert (tmp_path / "a" / "checkpoint-3" / "image_evaluation.safetensors").is_file()

    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")
    resumed, callback = make_trainer(tmp_path / "b", Scores([6.0, 2.5]), max_steps=5)
    assert math.isinf(callback.best)
    resumed.train(resume_from_checkpoint="last")
    logged = evaluations(resumed)
    assert [e["eval_fid"] for e in logged][-2:] == [6.0, 2.5]
    assert [e["eval_fid_best"] for e in logged][-2:] == [3.0, 2.5]  # 3.0 came from the checkpoint


def test_greater_is_better_nonfinite_values_and_missing_metric():
    class Trainer:
        def __init__(self):
            self.control = type("Control", (), {"should_log": True})()

        def log(self, metrics):
            self.control.should_log = False  # what Trainer.log does to a pending decision

    model = ScalarModel().train()
    callback = ImageEvaluationCallback(
        Trainer(), lambda m: {"score": next(values)}, best_metric="score", greater_is_better=True
    )
    values = iter([1.0, float("nan"), 3.0, 2.0])
    bests = [callback.evaluate(model, step)["eval_score_best"] for step in range(1, 5)]
    assert bests == [1.0, 1.0, 3.0, 3.0] and model.training
    assert callback.evaluate(model, 4) == {}  # once per step
    assert callback.trainer.control.should_log  # the trainer's pending decision to log is kept
    state = callback.state_dict()
    fresh = ImageEvaluationCallback(Trainer(), lambda m: {}, best_metric="score", greater_is_better=True)
    fresh.load_state_dict(state)
    assert fresh.best == 3.0
    with pytest.raises(KeyError, match="'score'"):
        fresh.evaluate(model, 1)
    with pytest.raises(ValueError, match="eval_steps"):
        ImageEvaluationCallback(Trainer(), lambda m: {}, best_metric="score", eval_steps=-1)
