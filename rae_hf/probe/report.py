"""Probe results on disk (JSON, a Markdown table, a PNG of accuracy vs learning rate) and in W&B.

The plot is drawn with PIL: matplotlib is not a dependency of the library (nor installed where it was written).
"""

from __future__ import annotations

import json
import math
import os

from PIL import Image, ImageDraw, ImageFont

__all__ = ["RESULT_FILES", "best_head", "log_to_wandb", "markdown_report", "plot_accuracy_vs_lr", "write_results"]

RESULT_FILES = {"json": "probe_results.json", "markdown": "probe_results.md", "plot": "accuracy_vs_lr.png"}
COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))  # fmt: skip


def best_head(heads: list[dict]) -> dict | None:
    """The head with the best validation top-1 (then top-5; lowest lr first on ties), diverged ones excluded."""
    candidates = [head for head in heads if not head.get("diverged")]
    if not candidates:
        return None
    return max(candidates, key=lambda head: (head["top1"], head["top5"], -head["base_learning_rate"]))


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown_report(results: dict) -> str:
    """Markdown summary: the best head, a table of every head (rows: learning rates, columns: feature variants),
    kNN accuracies, fine-tuning accuracy."""
    data = results["data"]
    lines = [
        f"# Probe of `{results['encoder']['name_or_path']}` ({results['mode']})",
        "",
        f"Validation: {data['num_validation']} images, {data['num_classes']} classes; "
        f"train: {data['num_train']} images. Accuracies in %.",
    ]
    heads = results.get("heads") or []
    if heads:
        best = results["best"]
        if best is not None:
            lines += ["", f"**Best linear head: `{best['feature']}`, base lr {best['base_learning_rate']:g} — top-1 "
                      f"{_pct(best['top1'])}, top-5 {_pct(best['top5'])}.**"]  # fmt: skip
        variants = list(dict.fromkeys(head["feature"] for head in heads))
        rates = sorted({head["base_learning_rate"] for head in heads})
        cell = {(h["feature"], h["base_learning_rate"]): h for h in heads}
        lines += ["", "## Linear heads (top-1 / top-5)", "", "| base lr | lr | " + " | ".join(variants) + " |"]
        lines.append("| --- | --- |" + " --- |" * len(variants))
        for rate in rates:
            row = [f"{rate:g}", f"{rate * results['training']['lr_scale']:.3g}"]
            for variant in variants:
                head = cell.get((variant, rate))
                text = "diverged" if head and head.get("diverged") else f"{_pct(head['top1'])} / {_pct(head['top5'])}"
                row.append(("**" + text + "**" if head is best else text) if head else "")
            lines.append("| " + " | ".join(row) + " |")
    knn = results.get("knn") or []
    if knn:
        variants = list(dict.fromkeys(entry["feature"] for entry in knn))
        ks = sorted({entry["k"] for entry in knn})
        cell = {(e["feature"], e["k"]): e for e in knn}
        temperature = knn[0]["temperature"]
        lines += ["", f"## kNN (T = {temperature:g}; top-1 / top-5)", "", "| k | " + " | ".join(variants) + " |"]
        lines.append("| --- |" + " --- |" * len(variants))
        for k in ks:
            row = [str(k)] + [f"{_pct(cell[(v, k)]['top1'])} / {_pct(cell[(v, k)]['top5'])}" for v in variants]
            lines.append("| " + " | ".join(row) + " |")
    finetune = results.get("finetune")
    if finetune:
        lines += ["", f"## Fine-tuning ({results['mode']}, `{finetune['feature']}`)", "", "| top-1 | top-5 |",
                  "| --- | --- |", f"| {_pct(finetune['top1'])} | {_pct(finetune['top5'])} |"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def plot_accuracy_vs_lr(heads: list[dict], path: str, title: str = "Linear probe") -> str:
    """Top-1 validation accuracy vs base learning rate (log scale), one line per feature variant; the best head
    is ringed. Written as a PNG at `path`."""
    width, height, left, right, top, bottom = 960, 560, 80, 230, 50, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(13)

    logs = [math.log10(head["base_learning_rate"]) for head in heads]
    x_min, x_max = min(logs), max(logs)
    if x_max - x_min < 1e-9:
        x_min, x_max = x_min - 0.5, x_max + 0.5
    accuracies = [100 * head["top1"] for head in heads if not head.get("diverged")] or [0.0, 100.0]
    low, high = min(accuracies) - 1, max(accuracies) + 1
    y_step = next(step for step in (1, 2, 5, 10, 20) if high - low <= 5 * step)
    y_min = max(0, y_step * math.floor(low / y_step))
    y_max = min(100, y_step * math.ceil(high / y_step))

    def to_xy(lr: float, accuracy: float) -> tuple[float, float]:
        x = left + (math.log10(lr) - x_min) / (x_max - x_min) * plot_w
        return x, top + (1 - (accuracy - y_min) / (y_max - y_min)) * plot_h

    for value in range(y_min, y_max + 1, y_step):  # horizontal grid and y labels
        _, y = to_xy(10**x_min, value)
        draw.line([(left, y), (left + plot_w, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{value:.0f}", fill="black", font=small, anchor="rm")
    decades = range(math.ceil(x_min - 1e-9), math.floor(x_max + 1e-9) + 1)
    ticks = [10.0**d for d in decades] if len(decades) >= 2 else sorted({h["base_learning_rate"] for h in heads})
    for lr in ticks:  # vertical grid and x labels
        x, _ = to_xy(lr, y_min)
        draw.line([(x, top), (x, top + plot_h)], fill=(225, 225, 225))
        draw.text((x, top + plot_h + 8), f"{lr:g}", fill="black", font=small, anchor="mt")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    draw.text((left + plot_w / 2, 18), title, fill="black", font=font, anchor="mm")
    draw.text((left + plot_w / 2, height - 20), "base learning rate (log scale)", fill="black", font=small, anchor="mm")
    draw.text((left, top - 8), "validation top-1 (%)", fill="black", font=small, anchor="lb")

    best = best_head(heads)
    variants = list(dict.fromkeys(head["feature"] for head in heads))
    for index, variant in enumerate(variants):
        color = COLORS[index % len(COLORS)]
        points = sorted(
            (h["base_learning_rate"], 100 * h["top1"], h is best)
            for h in heads
            if h["feature"] == variant and not h.get("diverged")
        )
        xy = [to_xy(lr, accuracy) for lr, accuracy, _ in points]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=3)
        for (x, y), (_, _, is_best) in zip(xy, points, strict=True):
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
            if is_best:
                draw.ellipse([x - 9, y - 9, x + 9, y + 9], outline="black", width=2)
        legend_y = top + 10 + 24 * index
        draw.rectangle([left + plot_w + 20, legend_y, left + plot_w + 40, legend_y + 12], fill=color)
        draw.text((left + plot_w + 48, legend_y + 6), variant, fill="black", font=small, anchor="lm")
    image.save(path)
    return path


def write_results(output_dir: str, results: dict) -> dict[str, str]:
    """Write the JSON, the Markdown table and (with linear heads) the plot; returns their paths by kind."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {kind: os.path.join(output_dir, name) for kind, name in RESULT_FILES.items()}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=2)
    with open(paths["markdown"], "w") as f:
        f.write(markdown_report(results))
    if results.get("heads"):
        plot_accuracy_vs_lr(results["heads"], paths["plot"], f"Linear probe of {results['encoder']['name_or_path']}")
    else:
        del paths["plot"]
    return paths


def log_to_wandb(results: dict, paths: dict[str, str], run_name: str | None, config: dict) -> None:
    """Log the summary, the per-head and kNN tables and the plot to the active W&B run (or a new one)."""
    import wandb

    run = wandb.run
    started = run is None
    if started:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "rae_hf"), name=run_name, config=config, job_type="probe"
        )
    summary, logs = {}, {}
    if results.get("best"):
        summary.update({f"probe/best_{k}": results["best"][k] for k in ("top1", "top5", "base_learning_rate")})
        summary["probe/best_feature"] = results["best"]["feature"]
    for table_name in ("heads", "knn"):
        rows = results.get(table_name) or []
        if rows:
            columns = list(rows[0])
            logs[f"probe/{table_name}"] = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    if results.get("finetune"):
        summary.update({f"probe/{k}": v for k, v in results["finetune"].items() if isinstance(v, float)})
    if "plot" in paths:
        logs["probe/accuracy_vs_lr"] = wandb.Image(paths["plot"])
    run.summary.update(summary)
    if logs:
        run.log(logs)
    if started:
        run.finish()
