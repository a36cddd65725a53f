"""Pictures a person can read: grids enlarged to a readable size with class captions and named rows, the prune plot's
"round N" labels never overlapping, the probe plot named after what it sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from rae_hf.probe.report import write_results
from rae_hf.prune.report import _font, _free_label_box, _overlaps, plot_accuracy_vs_sparsity
from rae_hf.visualization import MIN_CELL_SIZE, image_grid, labelled_grid, reconstruction_grid, save_png, to_uint8


def dark(region: torch.Tensor) -> int:
    """Pixels of text (dark) in a region of a grid on white."""
    return int((region.mean(0) < 0.5).sum())


def test_labelled_grid_enlarges_small_samples_and_captions_each():
    images = torch.ones(4, 3, 16, 16)  # white samples: anything dark is caption text
    grid = labelled_grid(images, [0, 1, 2, 3], ["circle", "cross", "square", "triangle"], columns=2)
    assert grid.shape[1] > 2 * MIN_CELL_SIZE and grid.shape[2] > 2 * MIN_CELL_SIZE
    captions = [grid[:, top : top + 20] for top in (4 + MIN_CELL_SIZE, grid.shape[1] - 24)]
    assert all(dark(strip) > 20 for strip in captions)  # a caption under each row of cells
    unnamed = labelled_grid(images, [0, 1, 2, 3], None, columns=2)  # ids when there are no names
    assert unnamed.shape == grid.shape and not torch.equal(unnamed, grid)


def test_reconstruction_grid_names_its_rows():
    grid = reconstruction_grid(torch.ones(3, 3, 32, 32), torch.ones(3, 3, 32, 32), columns=3)
    label_column = grid[:, :, : grid.shape[2] - 3 * (MIN_CELL_SIZE + 4)]
    half = grid.shape[1] // 2
    assert dark(label_column[:, :half]) > 50 and dark(label_column[:, half:]) > 50  # "original", "reconstruction"
    assert dark(grid[:, :, label_column.shape[2] :]) == 0  # the white images themselves


def test_png_pixels_are_the_reported_pixels(tmp_path):
    grid = image_grid(torch.rand(2, 3, 8, 8), columns=2, captions=["a", "b"])
    path = save_png(grid, str(tmp_path / "grid.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), to_uint8(grid))


def test_prune_round_labels_do_not_overlap(tmp_path):
    draw = ImageDraw.Draw(Image.new("RGB", (400, 300)))
    points = [(100.0, 100.0), (103.0, 101.0), (106.0, 99.0), (300.0, 200.0)]  # three rounds at almost one spot
    taken = [(x - 5, y - 5, x + 5, y + 5) for x, y in points]
    labels = []
    for index, (x, y) in enumerate(points):
        box = _free_label_box(draw, f"round {index}", _font(13), x, y, taken, (0, 0, 400, 300))
        labels.append(box)
        taken.append(box)
    assert not any(_overlaps(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :])
    rows = [{"round": i, "weight_sparsity": s, "eval_top1": 0.5} for i, s in enumerate((0.0, 0.01, 0.02))]
    assert Image.open(plot_accuracy_vs_sparsity(rows, str(tmp_path / "plot.png"))).size == (800, 500)


def _heads(key: str) -> list[dict]:
    return [{"feature": "cls", key: value, "top1": top1, "top5": 1.0, "holdout_top1": 0.5, "diverged": False}
            for value, top1 in ((0.01, 0.25), (0.1, 0.3125), (1.0, 0.28))]  # fmt: skip


@pytest.mark.parametrize(("key", "name"), [("l2", "accuracy_vs_l2.png"), ("base_learning_rate", "accuracy_vs_lr.png")])
def test_probe_plot_is_named_after_the_swept_parameter(tmp_path, key, name):
    results = {"heads": _heads(key), "encoder": {"name_or_path": "tiny"}, "mode": "linear",
               "data": {"num_validation": 16, "num_classes": 4, "num_train": 32}}  # fmt: skip
    assert write_results(str(tmp_path), results)["plot"] == str(tmp_path / name)


def test_probe_plot_marks_the_refit_head_when_it_differs_from_the_selected_point(tmp_path):
    base = {"heads": _heads("l2"), "encoder": {"name_or_path": "tiny"}, "mode": "linear",
            "data": {"num_validation": 16, "num_classes": 4, "num_train": 32}}  # fmt: skip
    selected = dict(base["heads"][1])
    plain = write_results(str(tmp_path / "a"), base | {"best": selected})["plot"]
    refit = write_results(str(tmp_path / "b"), base | {"best": selected | {"top1": 0.375}})["plot"]
    drawn = np.asarray(Image.open(refit)).astype(int) - np.asarray(Image.open(plain)).astype(int)
    assert np.abs(drawn).sum() > 0  # the diamond at 37.5% and the note below the axis
