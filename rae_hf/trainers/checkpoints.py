"""Checkpoint folders on disk: completeness markers, the newest complete checkpoint, what a resume needs, and the
one resume rule and output-dir guard of every script and trainer (`prepare_output_dir`)."""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil

COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
FSDP_OPTIMIZER = ("optimizer_0", "optimizer.bin")  # FSDP: sharded folder / full state, for optimizer.pt
# What shows that a run wrote into output_dir (the one list for every method): a saved model, Trainer's final state
# and metrics, evaluation and probe results, CSV logs, pruning's finished rounds and rewind point; plus checkpoints
# (`checkpoint-N`, or `round_K/checkpoint-N` for a run of several training rounds) and the folders in RUN_DIRS.
FINISHED_RUN_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "trainer_state.json",
    "train_results.json",
    "eval_results.json",
    "probe_results.json",
)
PROGRESS_FILES = ("logs.csv", "rounds.jsonl", "rewind.safetensors")  # written while a run goes on
RUN_FILES = FINISHED_RUN_FILES + PROGRESS_FILES
RUN_DIRS = ("final", "final_masked")  # pruning's published models
RESUME_LAST = ("last", "latest")
_ROUND = re.compile(r"^round_(\d+)$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def write_complete_marker(checkpoint_dir: str, step: int) -> None:
    """Mark a checkpoint folder complete (written last, atomically: a temporary file renamed into place)."""
    tmp = os.path.join(checkpoint_dir, f".{COMPLETE_MARKER}.tmp")
    with open(tmp, "w") as f:
        json.dump({"global_step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(checkpoint_dir, COMPLETE_MARKER))


def is_complete(checkpoint_dir: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint_dir, COMPLETE_MARKER))


def checkpoints_by_step(output_dir: str) -> list[tuple[int, str]]:
    """`(step, path)` of every `checkpoint-N` folder of `output_dir`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "checkpoint-*")):
        match = _CHECKPOINT.match(os.path.basename(path))
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def round_dirs(output_dir: str) -> list[tuple[int, str]]:
    """`(index, path)` of every `round_K` folder of `output_dir` (a run of several training rounds), first first."""
    found = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = _ROUND.match(name)
            if match and os.path.isdir(os.path.join(output_dir, name)):
                found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def run_checkpoints(output_dir: str) -> list[str]:
    """Every checkpoint folder of a run, oldest first: `checkpoint-N`, then those of `round_K/` in round order."""
    paths = [path for _, path in checkpoints_by_step(output_dir)]
    for _, folder in round_dirs(output_dir):
        paths += [path for _, path in checkpoints_by_step(folder)]
    return paths


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint that finished writing (a folder left by a kill or a full disk is passed over)."""
    for path in reversed(run_checkpoints(output_dir)):
        if is_complete(path):
            return path
    return None


def missing_resume_files(checkpoint_dir: str, state_names: list[str], num_processes: int) -> list[str]:
    """Files a checkpoint must hold to resume exactly: Trainer's, the RNG state(s) and the registered extra states
    (`<name>.safetensors` or `<name>.pt`)."""
    missing = [name for name in TRAINER_FILES if not os.path.isfile(os.path.join(checkpoint_dir, name))]
    if "optimizer.pt" in missing and any(os.path.exists(os.path.join(checkpoint_dir, n)) for n in FSDP_OPTIMIZER):
        missing.remove("optimizer.pt")
    for name in state_names:
        if not any(os.path.isfile(os.path.join(checkpoint_dir, f"{name}.{ext}")) for ext in ("safetensors", "pt")):
            missing.append(f"{name}.safetensors")
    if num_processes > 1:
        rng = [f"rng_state_{rank}.pth" for rank in range(num_processes)]
    else:
        rng = ["rng_state.pth"]
    missing += [name for name in rng if not os.path.isfile(os.path.join(checkpoint_dir, name))]
    if not is_complete(checkpoint_dir):
        missing.append(COMPLETE_MARKER)
    return missing


def existing_run_files(output_dir: str) -> list[str]:
    """What in `output_dir` shows that a run already wrote there (paths relative to it)."""
    if not os.path.isdir(output_dir):
        return []
    found = [name for name in RUN_FILES + RUN_DIRS if os.path.exists(os.path.join(output_dir, name))]
    found += [os.path.relpath(path, output_dir) for path in run_checkpoints(output_dir)]
    return found


def _resolve_resume_checkpoint(
    output_dir: str, resume_from_checkpoint: str | bool | None, allow_partial_resume: bool = False
) -> str | None:
    """The checkpoint a run resumes from: None/False -> None; `last`/`latest`/True -> the newest complete checkpoint
    of `output_dir` (an error when there is none); a path -> itself, which must be a complete checkpoint folder."""
    if resume_from_checkpoint in (None, False, ""):
        return None
    if resume_from_checkpoint is True or resume_from_checkpoint in RESUME_LAST:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            incomplete = [os.path.relpath(p, output_dir) for p in run_checkpoints(output_dir)]
            detail = f" (only incomplete ones: {', '.join(incomplete)})" if incomplete else ""
            raise FileNotFoundError(
                f"--resume_from_checkpoint {resume_from_checkpoint}: no checkpoint to resume in {output_dir} (no "
                f"complete checkpoint{detail}). Start a new run without --resume_from_checkpoint, or pass the path "
                "of a checkpoint folder."
            )
        return checkpoint
    path = str(resume_from_checkpoint)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such checkpoint folder.")
    if not is_complete(path) and not allow_partial_resume:
        raise FileNotFoundError(
            f"--resume_from_checkpoint {path}: the folder has no {COMPLETE_MARKER}, so it was not completely "
            "written (or not by rae_hf). Pass --allow_partial_resume true to resume from it anyway."
        )
    return path


def _check_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds another run (finished or interrupted), unless asked to
    overwrite or to resume. With `overwrite`, the old run's files, checkpoints and rounds are removed first (on the
    main process), so two runs never mix."""
    found = existing_run_files(output_dir)
    if not found or resuming:
        return
    if not overwrite:
        checkpoint = last_complete_checkpoint(output_dir)
        finished = [name for name in found if name in FINISHED_RUN_FILES + RUN_DIRS]
        state = f"a finished run ({', '.join(finished[:6])})" if finished else "an interrupted run"
        where = f"; its newest complete checkpoint is {checkpoint}" if checkpoint else f" ({', '.join(found[:6])})"
        raise FileExistsError(
            f"output_dir {output_dir} already holds {state}{where}. Pass --resume_from_checkpoint last to continue "
            "it, --overwrite_output_dir true to replace it, or choose another --output_dir. Nothing was written."
        )
    _wait_for_everyone()  # every process has listed the old run before the main process removes it
    if _is_main_process():
        for path in reversed(run_checkpoints(output_dir)):
            shutil.rmtree(path)
        for _, path in round_dirs(output_dir):
            shutil.rmtree(path)
        for name in RUN_FILES + RUN_DIRS:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.isfile(path):
                os.remove(path)
    _wait_for_everyone()


def prepare_output_dir(
    output_dir: str,
    resume_from_checkpoint: str | bool | None,
    overwrite_output_dir: bool,
    *,
    allow_partial_resume: bool = False,
) -> str | None:
    """The one resume rule and output-dir guard of every script and trainer, run before anything is written.

    Resolves `resume_from_checkpoint` (`_resolve_resume_checkpoint`), then refuses a new run in a folder holding a
    finished or interrupted one unless resuming or `overwrite_output_dir` (which clears the old run). Returns the
    checkpoint to resume from, or None. Idempotent: `BaseTrainer.train` calls it again with the resolved path.
    """
    checkpoint = _resolve_resume_checkpoint(output_dir, resume_from_checkpoint, allow_partial_resume)
    _check_output_dir(output_dir, checkpoint is not None, overwrite_output_dir)
    return checkpoint


def _is_main_process() -> bool:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def _wait_for_everyone() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def explain_save_failure(error: BaseException, checkpoint_dir: str) -> OSError | None:
    """An `OSError` naming the disk when saving failed for lack of space (torch reports it as `unexpected pos`)."""
    folder = os.path.dirname(os.path.abspath(checkpoint_dir))
    no_space = getattr(error, "errno", None) == errno.ENOSPC or "unexpected pos" in str(error)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if not no_space and (free is None or free > 64 * 2**20):
        return None
    return OSError(
        errno.ENOSPC,
        f"Saving {checkpoint_dir} failed: the disk holding {folder} is full ({free} bytes free). The incomplete "
        "folder has no completeness marker and is never resumed from; free space, then resume with "
        "--resume_from_checkpoint last (the newest complete checkpoint).",
    )
