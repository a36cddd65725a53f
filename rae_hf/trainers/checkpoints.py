"""Checkpoint folders on disk: completeness markers, the newest complete checkpoint, what a resume needs, and the
guard against writing a new run over a finished one."""

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
RUN_FILES = ("model.safetensors", "trainer_state.json", "logs.csv", "train_results.json")
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


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint that finished writing (a folder left by a kill or a full disk is passed over)."""
    for _, path in reversed(checkpoints_by_step(output_dir)):
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
    """What in `output_dir` shows that a run already wrote there."""
    if not os.path.isdir(output_dir):
        return []
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(output_dir, name))]
    found += [os.path.basename(path) for _, path in checkpoints_by_step(output_dir)]
    return found


def check_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds another run, unless asked to overwrite or to resume.

    With `overwrite`, the old run's checkpoints and logs are removed first, so two runs never mix.
    """
    found = existing_run_files(output_dir)
    if not found or resuming:
        return
    if not overwrite:
        raise FileExistsError(
            f"output_dir {output_dir} already holds a run ({', '.join(found[:6])}). Pass --overwrite_output_dir "
            "true to replace it, --resume_from_checkpoint last to continue it, or choose another --output_dir."
        )
    for _, path in checkpoints_by_step(output_dir):
        shutil.rmtree(path)
    for name in RUN_FILES:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)


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
