"""`PruneRounds`: the round loop of iterative pruning on top of `PruneTrainer` (train under masks, evaluate, record,
compute the next masks, rewind; shrink at the end), and where an interrupted or extended run resumes.

Layout of `output_dir`: `round_K/` (the round's checkpoints and logs; `masks.safetensors`, the masks it trains
under, K > 0), `rewind.safetensors`, `rounds.jsonl` (+ `.csv`, `.md`, a plot: one row per finished round), and at the
end `final/` (the shrunk model) and `final_masked/`. The output-dir guard and `last` are the shared ones
(`prepare_output_dir`), which know this layout: an interrupted run is refused with its newest checkpoint named.
"""

from __future__ import annotations

import copy
import logging
import math
import os

import safetensors.torch
import torch

from ..hub import write_model_card
from ..models.vit import image_processor
from ..prune import (
    PRUNING_CALLBACKS,
    RewindCaptureCallback,
    RoundMasks,
    capture_state,
    load_rewind_state,
    pruning_stats,
    rewind,
    save_rewind_state,
    shrink_model,
)
from ..prune.report import append_round, prune_model_card, read_rounds
from .checkpoints import RESUME_LAST, last_complete_checkpoint, prepare_output_dir
from .prune_config import PruneTrainingArguments
from .prune_trainer import PruneTrainer

logger = logging.getLogger(__name__)
MASKS_FILE = "masks.safetensors"


def round_dir(output_dir: str, index: int) -> str:
    return os.path.join(output_dir, f"round_{index}")


def resume_point(
    output_dir: str,
    resume_from_checkpoint: str | bool | None,
    overwrite_output_dir: bool,
    allow_partial_resume: bool = False,
) -> tuple[int, str | None]:
    """`(first round to run, checkpoint of that round or None)`, after the shared guard and resume rule.

    `last` continues in the newest complete checkpoint of the first unfinished round, or at that round's start when
    it has none (finished rounds are a resume point of their own: `rounds.jsonl`); an explicit path must be a
    checkpoint of that round. Nothing to resume (`last` on an empty folder) is an error, as for every trainer."""
    done = len(read_rounds(output_dir))
    if (resume_from_checkpoint is True or resume_from_checkpoint in RESUME_LAST) and done:
        checkpoint = last_complete_checkpoint(round_dir(output_dir, done))
        return done, checkpoint
    checkpoint = prepare_output_dir(
        output_dir, resume_from_checkpoint, overwrite_output_dir, allow_partial_resume=allow_partial_resume
    )
    if checkpoint is None:
        return 0, None
    parent = os.path.dirname(os.path.abspath(checkpoint))
    rounds = {os.path.abspath(round_dir(output_dir, index)): index for index in range(done + 1)}
    if rounds.get(parent) != done:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: this pruning run continues in round {done}, so the checkpoint "
            f"must be one of {round_dir(output_dir, done)}/checkpoint-*; or pass --resume_from_checkpoint last."
        )
    return done, checkpoint


class PruneRounds:
    """The round loop (see the module docstring); `run(start, checkpoint)` takes `resume_point`'s answer."""

    def __init__(self, model, args: PruneTrainingArguments, train_dataset, eval_dataset, collator, scoring_batch):
        self.model, self.args = model, args
        self.train_dataset, self.eval_dataset, self.collator = train_dataset, eval_dataset, collator
        self.batch = scoring_batch
        self.output_dir = args.output_dir

    def make_callback(self, masks: RoundMasks | None):
        """The round's callback; it also computes the masks of a further round (saved, so a run can be extended)."""
        args = self.args
        kwargs = dict(masks=masks, rate=args.prune_rate, target_suffixes=args.prune_targets)
        if args.prune_method in ("refill", "rsst"):
            kwargs.update(fillback_rate=args.fillback_rate, criterion=args.criterion, scoring_batch=self.batch)
        if args.prune_method == "rsst":
            kwargs.update(
                reg_curve=args.reg_curve, reg_granularity=args.reg_granularity, reg_exponent=args.reg_exponent
            )
        return PRUNING_CALLBACKS[args.prune_method](**kwargs)

    def run(self, start: int = 0, checkpoint: str | None = None) -> list[dict]:
        """Rounds `start`.. of the run (round `start` from `checkpoint`, else from its beginning); the rows of all."""
        args = self.args
        resuming = start > 0 or checkpoint is not None
        rewind_state = load_rewind_state(self.output_dir)
        masks = None
        if start > 0:
            if rewind_state is None:
                raise FileNotFoundError(f"{self.output_dir}/rewind.safetensors is missing: cannot continue the rounds.")
            path = os.path.join(round_dir(self.output_dir, start), MASKS_FILE)
            masks = RoundMasks.from_state_dict(safetensors.torch.load_file(path))
            rewind(self.model, rewind_state, masks.train)
        elif args.rewind_step == 0 and args.rewind_epoch in (None, 0) and rewind_state is None:
            rewind_state = capture_state(self.model)
            if args.should_save:
                save_rewind_state(rewind_state, self.output_dir)
        for index in range(start, args.prune_rounds):
            last = index == args.prune_rounds - 1
            callback = self.make_callback(masks)
            # a resumed round without a complete checkpoint restarts from its beginning: its remnants are cleared
            restart = resuming and index == start and checkpoint is None
            trainer = self.make_trainer(index, callback, overwrite=restart)
            capture = None
            if index == 0 and rewind_state is None:
                capture = RewindCaptureCallback(self.rewind_step(trainer), self.output_dir, args.should_save)
                trainer.add_callback(capture)
            train_result = trainer.train(resume_from_checkpoint=checkpoint if index == start else None)
            if capture is not None:
                rewind_state = capture.state if capture.state is not None else load_rewind_state(self.output_dir)
                if rewind_state is None:
                    raise RuntimeError(f"Round 0 ended before the rewind step {capture.step}; lower --rewind_step.")
            row = self.round_row(index, callback, trainer.evaluate(), train_result.metrics)
            if last:
                row.update(self.save_final(row))
            masks = callback.next_masks
            if args.should_save:
                if masks is not None:
                    os.makedirs(round_dir(self.output_dir, index + 1), exist_ok=True)
                    path = os.path.join(round_dir(self.output_dir, index + 1), MASKS_FILE)
                    safetensors.torch.save_file(masks.state_dict(), path)
                append_round(self.output_dir, row)
                self.log_wandb(row)
            trainer.accelerator.wait_for_everyone()
            logger.info("Round %d: %s", index, {k: v for k, v in row.items() if isinstance(v, (int, float))})
            if not last and masks is not None:
                rewind(self.model, rewind_state, masks.train)
        return read_rounds(self.output_dir)

    def rewind_step(self, trainer: PruneTrainer) -> int:
        """Optimizer steps of round 0 before the rewind point (`rewind_epoch` converted with the epoch length)."""
        if self.args.rewind_epoch is None:
            return self.args.rewind_step
        batches = len(trainer.get_train_dataloader())
        return self.args.rewind_epoch * math.ceil(batches / self.args.gradient_accumulation_steps)

    def make_trainer(self, index: int, callback, overwrite: bool) -> PruneTrainer:
        round_args = copy.deepcopy(self.args)
        round_args.output_dir = round_dir(self.output_dir, index)
        round_args.overwrite_output_dir = overwrite
        round_args.resume_from_checkpoint = None  # resolved for the whole run by `resume_point`
        if round_args.run_name:
            round_args.run_name = f"{round_args.run_name}-round{index}"
        return PruneTrainer(
            model=self.model,
            args=round_args,
            train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset,
            data_collator=self.collator,
            pruning=callback,
            num_classes=self.model.config.num_labels,
        )

    def round_row(self, index: int, callback, metrics: dict, train_metrics: dict) -> dict:
        row = {"round": index, "method": self.args.prune_method}
        row.update(pruning_stats(self.model, self.args.prune_targets))
        row.update({k: v for k, v in metrics.items() if k.startswith("eval_")})
        row["train_runtime"] = train_metrics.get("train_runtime")
        row["train_loss"] = train_metrics.get("train_loss")
        if getattr(callback, "current_lambda", None):
            row["rsst_lambda_last"] = callback.current_lambda
        return row

    def save_final(self, row: dict) -> dict:
        """Save the masked model and its shrunk copy (with model cards; `row`: the last round's numbers); check that
        the shrunk logits match on the scoring batch."""
        model = self.model.eval()
        small = shrink_model(model)
        pixels = self.batch["pixel_values"].to(next(model.parameters()).device)
        with torch.no_grad():
            difference = (small(pixels).logits - model(pixels).logits).abs().max().item()
        if self.args.should_save:
            for name, final in (("final_masked", model), ("final", small)):
                final.save_pretrained(os.path.join(self.output_dir, name))
                image_processor(final.config).save_pretrained(os.path.join(self.output_dir, name))
                rows = [*read_rounds(self.output_dir), row]
                card = prune_model_card(final.config, rows, self.args, name, final is model)
                write_model_card(os.path.join(self.output_dir, name), card)
        logger.info("Shrunk model saved to %s/final (max |logit difference| %.2e).", self.output_dir, difference)
        return {"shrink_max_logit_diff": difference}

    def log_wandb(self, row: dict) -> None:
        if "wandb" not in (self.args.report_to or []):
            return
        import wandb

        if wandb.run is not None:
            wandb.log({f"round/{k}": v for k, v in row.items() if isinstance(v, (int, float))})
