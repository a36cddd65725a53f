"""One resume rule and one output-dir guard (`prepare_output_dir`) for every script and trainer: a rerun into a
finished or interrupted run is refused before anything is written, `last` without a checkpoint is an error, an
explicit checkpoint is honoured, and `--overwrite_output_dir` clears the old run (pruning's rounds included)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import rae_hf.cli
from rae_hf.scripts import run_jit, run_prune, run_rae
from rae_hf.tools.make_tiny_models import make_tiny_discriminator, make_tiny_encoder
from rae_hf.tools.quickstart_assets import ensure_image_folders
from rae_hf.trainers.base_trainer import BaseTrainer
from rae_hf.trainers.checkpoints import COMPLETE_MARKER, FINISHED_RUN_FILES, prepare_output_dir
from rae_hf.trainers.prune_trainer import PruneTrainer

SCRIPTS = Path(run_rae.__file__).parent


def checkpoint(folder: Path, complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    if complete:
        (folder / COMPLETE_MARKER).write_text(json.dumps({"global_step": int(folder.name.split("-")[1])}))
    return folder


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` -> sha256 of its bytes."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ----- the function ---------------------------------------------------------------------------------------------
def test_last_resolves_the_newest_complete_checkpoint_and_latest_is_the_same(tmp_path):
    checkpoint(tmp_path / "checkpoint-2")
    checkpoint(tmp_path / "checkpoint-10")
    checkpoint(tmp_path / "checkpoint-12", complete=False)
    for value in ("last", "latest", True):
        assert prepare_output_dir(str(tmp_path), value, False) == str(tmp_path / "checkpoint-10")
    assert prepare_output_dir(str(tmp_path), None, True) is None  # a new run: the old one is cleared
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["last", "latest"])
def test_last_without_a_complete_checkpoint_is_an_error_not_a_fresh_start(tmp_path, value):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        prepare_output_dir(str(tmp_path / "empty"), value, False)
    checkpoint(tmp_path / "run" / "checkpoint-4", complete=False)
    with pytest.raises(FileNotFoundError, match="only incomplete ones: checkpoint-4"):
        prepare_output_dir(str(tmp_path / "run"), value, False)


def test_an_explicit_checkpoint_must_exist_and_be_complete(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        prepare_output_dir(str(tmp_path), str(tmp_path / "checkpoint-9"), False)
    partial = checkpoint(tmp_path / "checkpoint-3", complete=False)
    with pytest.raises(FileNotFoundError, match="allow_partial_resume"):
        prepare_output_dir(str(tmp_path), str(partial), False)
    assert prepare_output_dir(str(tmp_path), str(partial), False, allow_partial_resume=True) == str(partial)


@pytest.mark.parametrize("name", FINISHED_RUN_FILES)
def test_a_finished_run_is_refused_and_left_as_it_was(tmp_path, name):
    (tmp_path / name).write_text("old")
    with pytest.raises(FileExistsError, match=r"finished run .*--resume_from_checkpoint last.*--overwrite_output_dir"):
        prepare_output_dir(str(tmp_path), None, False)
    assert (tmp_path / name).read_text() == "old"


def test_an_interrupted_run_is_refused_naming_its_checkpoint(tmp_path):
    checkpoint(tmp_path / "checkpoint-7")
    (tmp_path / "logs.csv").write_text("step\n")
    with pytest.raises(FileExistsError, match=r"interrupted run; its newest complete checkpoint is .*checkpoint-7"):
        prepare_output_dir(str(tmp_path), None, False)
    assert (tmp_path / "checkpoint-7").is_dir()


def test_an_interrupted_pruning_run_is_refused_resumed_or_cleared(tmp_path):
    """Pruning keeps its checkpoints in round_K/: the guard and `last` see them; overwrite clears the rounds."""
    checkpoint(tmp_path / "round_0" / "checkpoint-3")
    checkpoint(tmp_path / "round_1" / "checkpoint-7")
    (tmp_path / "rewind.safetensors").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"round_1/checkpoint-7"):
        prepare_output_dir(str(tmp_path), None, False)
    assert prepare_output_dir(str(tmp_path), "last", False) == str(tmp_path / "round_1" / "checkpoint-7")
    assert prepare_output_dir(str(tmp_path), None, True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # only the run's own files are removed


def test_one_resolution_and_one_guard():
    """Before: `cli.resolve_resume_checkpoint`, `BaseTrainer.resolve_checkpoint` and prune's own rule."""
    assert not hasattr(rae_hf.cli, "resolve_resume_checkpoint")
    assert not hasattr(BaseTrainer, "resolve_checkpoint")
    for script in sorted(SCRIPTS.glob("run_*.py")):
        text = script.read_text()
        assert "check_output_dir" not in text and "resolve_resume_checkpoint" not in text, script.name
        assert "overwrite_output_dir = True" not in text, script.name


# ----- the scripts ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_data(tmp_path_factory) -> str:
    splits = {"train": 8, "validation": 4, "test": 0}
    return ensure_image_folders(str(tmp_path_factory.mktemp("guard") / "data"), image_size=16, splits=splits)


def prune_argv(output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset_name", "synthetic", "--synthetic_train_size", "16", "--synthetic_validation_size", "8",
        "--synthetic_image_size", "16", "--image_size", "16", "--model_preset", "vit_tiny",
        "--config_overrides", "num_hidden_layers=1,hidden_size=48,intermediate_size=96", "--prune_rounds", "2",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--save_strategy", "steps", "--save_steps", "1",
        "--output_dir", str(output_dir), "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
        "--dataloader_num_workers", "0", "--seed", "0", *extra,
    ]  # fmt: skip


def jit_argv(output_dir: Path, data: str, *extra: str) -> list[str]:
    return [
        "--train_dir", f"{data}/train", "--validation_dir", f"{data}/validation", "--image_size", "16",
        "--model_preset", "JiT-B/4", "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
        "--bottleneck_dim", "8", "--in_context_start", "1", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4", "--max_steps", "1", "--sample_steps", "2", "--num_grid_samples", "2",
        "--sample_every", "0", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true",
        "--dataloader_num_workers", "0", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def rae_argv(output_dir: Path, data: str, models: dict, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", models["encoder"], "--discriminator_name_or_path", models["discriminator"],
        "--disc_input_size", "16", "--lpips_pretrained_backbone", "false", "--train_dir", f"{data}/train",
        "--validation_dir", f"{data}/validation", "--decoder_hidden_size", "32", "--decoder_num_hidden_layers", "1",
        "--decoder_num_attention_heads", "2", "--decoder_intermediate_size", "64", "--decoder_patch_size", "8",
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "4", "--max_steps", "1",
        "--fid_steps", "0", "--fid_at_epoch_end", "false", "--sample_every", "0", "--num_sample_images", "2",
        "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "true", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def script_runs(image_data, tmp_path_factory):
    """`(main, argv(output_dir, *extra))` of each script, on tiny models and data."""
    root = tmp_path_factory.mktemp("models")
    models = {
        "encoder": make_tiny_encoder(str(root / "encoder"), image_size=16, patch_size=8, hidden_size=32, num_layers=1),
        "discriminator": make_tiny_discriminator(str(root / "discriminator"), image_size=16, hidden_size=16),
    }
    return {
        "prune": (run_prune.main, lambda out, *extra: prune_argv(out, *extra)),
        "jit": (run_jit.main, lambda out, *extra: jit_argv(out, image_data, *extra)),
        "rae": (run_rae.main, lambda out, *extra: rae_argv(out, image_data, models, *extra)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("script", ["prune", "jit", "rae"])
def test_a_rerun_into_a_finished_run_is_refused_and_changes_nothing(script_runs, tmp_path, script):
    """Issue 20.2: hash the finished folder, run again with other values: refused, every byte as it was."""
    main, argv = script_runs[script]
    main(argv(tmp_path))
    before = digest(tmp_path)
    assert "run_config.json" in before
    with pytest.raises(FileExistsError, match="finished run"):
        main(argv(tmp_path, "--learning_rate", "0.5", "--seed", "7"))
    assert digest(tmp_path) == before


@pytest.mark.parametrize("script", ["prune", "jit", "rae"])
def test_resume_last_into_an_empty_folder_is_an_error_and_writes_nothing(script_runs, tmp_path, script):
    """Issue 20.7: before, pruning trained from scratch silently."""
    main, argv = script_runs[script]
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        main(argv(tmp_path / "run", "--resume_from_checkpoint", "last"))
    assert not (tmp_path / "run").exists() or not digest(tmp_path / "run")


class Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.slow
def test_an_interrupted_pruning_run_is_refused_then_resumed_from_the_checkpoint_asked_for(tmp_path, monkeypatch):
    """Issue 20.1 and 20.7: round 0 stops after its checkpoints; a plain rerun is refused (before: it deleted them
    and rewrote rewind.safetensors); an explicit checkpoint is the one resumed from (before: ignored)."""
    original_evaluate, original_train = PruneTrainer.evaluate, PruneTrainer.train

    def stop(self, *args, **kwargs):
        raise Interrupt("stopped after round 0's training")

    monkeypatch.setattr(PruneTrainer, "evaluate", stop)
    with pytest.raises(Interrupt):
        run_prune.main(prune_argv(tmp_path))
    monkeypatch.setattr(PruneTrainer, "evaluate", original_evaluate)
    assert (tmp_path / "round_0" / "checkpoint-2").is_dir() and not (tmp_path / "rounds.jsonl").exists()
    before = digest(tmp_path)
    with pytest.raises(
        FileExistsError, match=r"interrupted run; its newest complete checkpoint is .*round_0/checkpoint-2"
    ):
        run_prune.main(prune_argv(tmp_path))
    assert digest(tmp_path) == before

    resumed_from = []

    def spy(self, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return original_train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(PruneTrainer, "train", spy)
    asked = str(tmp_path / "round_0" / "checkpoint-1")
    rows = run_prune.main(prune_argv(tmp_path, "--resume_from_checkpoint", asked))
    assert resumed_from == [asked, None] and [row["round"] for row in rows] == [0, 1]
    with pytest.raises(ValueError, match="continues in round 2"):  # a finished round's checkpoint is not a resume
        run_prune.main(prune_argv(tmp_path, "--resume_from_checkpoint", asked))
