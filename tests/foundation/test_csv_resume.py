"""logs.csv after a resume reads as one run: rows at or past the resumed step are dropped, none is duplicated."""

from __future__ import annotations

import csv

from test_base_trainer import make_args, make_trainer


def _rows(path) -> list[tuple[int, str]]:
    with open(path, newline="") as f:
        return [(int(row["step"]), row["name"]) for row in csv.DictReader(f)]


def test_resume_drops_rows_past_the_checkpoint(tmp_path):
    args = dict(max_steps=6, save_steps=2, logging_steps=1)
    make_trainer(make_args(tmp_path, **args), emas=False).train()
    uninterrupted = _rows(tmp_path / "logs.csv")
    make_trainer(make_args(tmp_path, **args), emas=False).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    rows = _rows(tmp_path / "logs.csv")
    assert len(rows) == len(set(rows))  # no (step, name) logged twice
    assert [r for r in rows if r[1] == "loss"] == [(s, "loss") for s in range(1, 7)]
    assert set(rows) <= set(uninterrupted)  # the first log after a resume has no images/s yet
