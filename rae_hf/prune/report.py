"""Per-round records of a pruning run: `rounds.jsonl` (appended), `rounds.csv`, `rounds.md` and a PNG plot of
top-1 accuracy against weight sparsity, all in the run's output directory."""

from __future__ import annotations

import csv
import json
import os

from PIL import Image, ImageDraw, ImageFont

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


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def plot_accuracy_vs_sparsity(rows: list[dict], path: str, title: str = "Pruning rounds") -> str:
    """Validation top-1 (%) against weight sparsity (%), one point per round, labelled with the round."""
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
    for (x, y), (_, _, index) in zip(xy, points, strict=True):
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(31, 119, 180))
        draw.text((x + 6, y - 6), str(index), fill="black", font=small, anchor="lb")
    image.save(path)
    return path
