"""Per-round records of a pruning run: `rounds.jsonl` (appended), `rounds.csv`, `rounds.md` and a PNG plot of
top-1 accuracy against weight sparsity, all in the run's output directory; the model card of the final folders."""

from __future__ import annotations

import csv
import json
import os

from PIL import Image, ImageDraw, ImageFont

from ..hub import COMMON_TRAINING_KEYS, card_model_id, classifier_model_card, recipe_rows

ROUND_FILES = {
    "jsonl": "rounds.jsonl",
    "csv": "rounds.csv",
    "markdown": "rounds.md",
    "plot": "accuracy_vs_sparsity.png",
}
COLUMNS = (
    ("round", "round", "{}"),
    ("weight_sparsity", "weight sparsity", "{:.2%}"),
    ("head_sparsity", "head sparsity", "{:.2%}"),
    ("channel_sparsity", "MLP channel sparsity", "{:.2%}"),
    ("eval_top1", "top-1", "{:.2%}"),
    ("eval_top5", "top-5", "{:.2%}"),
    ("params_nonzero", "nonzero params", "{:,}"),
    ("params_shrunk", "params (shrunk)", "{:,}"),
    ("gflops_shrunk", "GFLOPs (shrunk)", "{:.4g}"),
)


def read_rounds(output_dir: str) -> list[dict]:
    """Rows of `rounds.jsonl` (empty when the run has none)."""
    path = os.path.join(output_dir, ROUND_FILES["jsonl"])
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_round(output_dir: str, row: dict) -> dict[str, str]:
    """Append `row` to rounds.jsonl and rewrite the CSV, the Markdown table and the plot from all rows."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {kind: os.path.join(output_dir, name) for kind, name in ROUND_FILES.items()}
    with open(paths["jsonl"], "a") as f:
        f.write(json.dumps(row) + "\n")
    rows = read_rounds(output_dir)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["markdown"], "w") as f:
        f.write(markdown_table(rows))
    plot_accuracy_vs_sparsity(rows, paths["plot"])
    return paths


def markdown_table(rows: list[dict]) -> str:
    """One line per round with sparsities, accuracy, size and cost."""
    present = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(title for _, title, _ in present) + " |", "|" + " --- |" * len(present)]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "" for key, _, fmt in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def prune_model_card(config, rows: list[dict], training_args, folder: str, masked: bool) -> str:
    """The card of `final/` (the shrunk ViT, `masked=False`) or `final_masked/` (zeros in place): the last round's
    sparsity and accuracy, the pruning recipe, an `AutoModelForImageClassification` snippet."""
    last = rows[-1] if rows else {}
    what = "pruned entries kept as zeros (original shapes)" if masked else "pruned heads and MLP channels removed"
    metrics = {key: last[key] for key, _, _ in COLUMNS if key != "round" and last.get(key) is not None}
    keys = (*COMMON_TRAINING_KEYS, "prune_method", "prune_rounds", "prune_rate", "criterion")
    return classifier_model_card(
        config,
        f"Pruned ViT ({training_args.prune_method}, {len(rows)} round{'s' * (len(rows) != 1)}{', masked' * masked})",
        f"A ViT image classifier pruned with rae_hf ({training_args.prune_method}): {what}. Per-round numbers are in "
        "the run's `rounds.md`.",
        card_model_id(training_args, os.path.join(training_args.output_dir, folder)),
        ["vit", "pruning", training_args.prune_method],
        remote_code=True,
        image_processor=True,
        settings=recipe_rows(training_args, keys),
        metrics=metrics,
        base_model=getattr(config, "_name_or_path", None),
    )


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def plot_accuracy_vs_sparsity(rows: list[dict], path: str, title: str = "Pruning rounds") -> str:
    """Validation top-1 (%) against weight sparsity (%), one point per round, labelled "round N" where the label
    overlaps no point and no other label."""
    width, height, left, right, top, bottom = 800, 500, 70, 30, 45, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(13)
    points = [(100 * r.get("weight_sparsity", 0.0), 100 * r.get("eval_top1", 0.0), r["round"]) for r in rows]
    x_max = max(10.0, max((p[0] for p in points), default=0.0) * 1.1)

    def to_xy(x: float, y: float) -> tuple[float, float]:
        return left + x / x_max * plot_w, top + (1 - y / 100) * plot_h

    for value in range(0, 101, 20):
        _, y = to_xy(0, value)
        draw.line([(left, y), (left + plot_w, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), str(value), fill="black", font=small, anchor="rm")
    for step in range(6):
        x_value = x_max * step / 5
        x, _ = to_xy(x_value, 0)
        draw.text((x, top + plot_h + 8), f"{x_value:.0f}", fill="black", font=small, anchor="mt")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    draw.text((left + plot_w / 2, 18), title, fill="black", font=font, anchor="mm")
    draw.text((left + plot_w / 2, height - 18), "weight sparsity (%)", fill="black", font=small, anchor="mm")
    draw.text((left, top - 8), "validation top-1 (%)", fill="black", font=small, anchor="lb")
    xy = [to_xy(x, y) for x, y, _ in points]
    if len(xy) > 1:
        draw.line(xy, fill=(31, 119, 180), width=3)
    for x, y in xy:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(31, 119, 180))
    taken = [(x - 5, y - 5, x + 5, y + 5) for x, y in xy]  # the points, then each label placed
    for (x, y), (_, _, index) in zip(xy, points, strict=True):
        text = f"round {index}"
        box = _free_label_box(draw, text, small, x, y, taken, (left, top, left + plot_w, top + plot_h))
        taken.append(box)
        draw.text(box[:2], text, fill="black", font=small, anchor="lt")
    image.save(path)
    return path


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _free_label_box(draw, text: str, font, x: float, y: float, taken: list[tuple], frame: tuple) -> tuple:
    """The box `(x0, y0, x1, y1)` of a label near the point `(x, y)`: the first spot (right, left, above, below, then
    further out) inside `frame` that overlaps no box in `taken`; the first spot when every one is taken."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, anchor="lt")
    w, h = x1 - x0, y1 - y0
    spots = []
    for distance in (1, 2, 3, 4, 5):
        gap = 8 + (distance - 1) * (h + 4)
        spots += [(x + 8, y - gap - h + 8 * (distance == 1)), (x - 8 - w, y - gap - h + 8 * (distance == 1)),
                  (x + 8, y + gap - 8 * (distance == 1)), (x - 8 - w, y + gap - 8 * (distance == 1))]  # fmt: skip
    boxes = [(sx, sy, sx + w, sy + h) for sx, sy in spots]
    inside = [b for b in boxes if b[0] >= frame[0] and b[1] >= frame[1] and b[2] <= frame[2] and b[3] <= frame[3]]
    for box in inside:
        if not any(_overlaps(box, other) for other in taken):
            return box
    return (inside or boxes)[0]
