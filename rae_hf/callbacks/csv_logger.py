"""Every logged value as a row of a CSV file (the plain-file logger the Lightning framework had)."""

from __future__ import annotations

import csv
import os

from transformers import TrainerCallback


class CSVLoggerCallback(TrainerCallback):
    """Appends `step,epoch,name,value` rows to `<output_dir>/logs.csv` on the main process, one row per logged value
    (long format, so training and evaluation entries with different keys share one file). A resumed run first drops
    the rows logged after its checkpoint's step (that step's own rows came before the checkpoint): no repeats."""

    def __init__(self, output_dir: str, filename: str = "logs.csv"):
        self.path = os.path.join(output_dir, filename)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or state.global_step == 0 or not os.path.isfile(self.path):
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [row for row in rows[1:] if int(row[0]) <= state.global_step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        new_file = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["step", "epoch", "name", "value"])
            for name, value in logs.items():
                if isinstance(value, (int, float)) and name != "epoch":
                    writer.writerow([state.global_step, state.epoch, name, value])
