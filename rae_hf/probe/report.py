"""Probe results on disk (JSON, a Markdown table, a PNG of accuracy vs the swept parameter: `accuracy_vs_l2.png` for
L-BFGS heads, `accuracy_vs_lr.png` for the SGD learning-rate grid) and in W&B.

`write_results` writes the JSON and the Markdown first; the plot comes last and a failure to draw it is logged, never
raised, so a finished probe always leaves its numbers. The plot is drawn with PIL: matplotlib is not a dependency of
the library.
"""

from __future__ import annotations

import json
import logging
import math
import os

from PIL import Image, ImageDraw, ImageFont

from ..hub import card_model_id, classifier_model_card

__all__ = [
    "PLOT_FILES",
    "RESULT_FILES",
    "best_head",
    "log_to_wandb",
    "markdown_report",
    "plot_accuracy_vs_lr",
    "probe_model_card",
    "write_results",
]

RESULT_FILES = {"json": "probe_results.json", "markdown": "probe_results.md"}
PLOT_FILES = {"l2": "accuracy_vs_l2.png", "base_learning_rate": "accuracy_vs_lr.png"}  # by the swept parameter
logger = logging.getLogger(__name__)
COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))  # fmt: skip


def best_head(heads: list[dict]) -> dict | None:
    """The head with the best validation top-1 (then top-5; lowest lr first on ties), diverged ones excluded."""
    candidates = [head for head in heads if not head.get("diverged")]
    if not candidates:
        return None
    return max(candidates, key=lambda head: (head["top1"], head["top5"], -head.get("base_learning_rate", 0.0)))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _grid_key(heads: list[dict]) -> str:
    """The swept parameter of the rows: `l2` (L-BFGS) or `base_learning_rate` (SGD grid)."""
    return "l2" if heads and "l2" in heads[0] else "base_learning_rate"


def _same_head(row: dict, best: dict | None, key: str) -> bool:
    return best is not None and row["feature"] == best["feature"] and row.get(key) == best.get(key)


def _best_line(best: dict) -> str:
    if "l2" in best:
        held = f", held-out top-1 {_pct(best.get('holdout_top1'))}" if best.get("holdout_top1") is not None else ""
        what = f"`{best['feature']}`, L-BFGS, l2 {best['l2']:g}{held}"
    else:
        what = f"`{best['feature']}`, base lr {best['base_learning_rate']:g}"
    interval = best.get("top1_ci95")
    ci = f" (95% CI {_pct(interval[0])} - {_pct(interval[1])})" if interval else ""
    return f"**Best linear head: {what} — validation top-1 {_pct(best['top1'])}{ci}, top-5 {_pct(best['top5'])}.**"


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
    training = results.get("training") or {}
    if training.get("protocol"):
        lines.append(
            f"Protocol `{training['protocol']}`: {training.get('solver')} heads, "
            f"selected on {training.get('selection')}"
            + (f" ({training['num_holdout']} held-out training images)." if training.get("num_holdout") else ".")
        )
    warnings = results.get("warnings") or []
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- **{w['code']}**: {w['message']}" for w in warnings]
    heads = results.get("heads") or []
    if heads:
        best = results.get("best")
        if best is not None:
            lines += ["", _best_line(best)]
        key = _grid_key(heads)
        held = any(head.get("holdout_top1") is not None for head in heads)
        variants = list(dict.fromkeys(head["feature"] for head in heads))
        values = sorted({head[key] for head in heads})
        cell = {(h["feature"], h[key]): h for h in heads}
        what = "held-out top-1 / validation top-1" if held else "top-1 / top-5"
        if key == "l2":
            lines += ["", f"## Linear heads ({what})", "", "| l2 | " + " | ".join(variants) + " |"]
            lines.append("| --- |" + " --- |" * len(variants))
        else:
            lines += ["", f"## Linear heads ({what})", "", "| base lr | lr | " + " | ".join(variants) + " |"]
            lines.append("| --- | --- |" + " --- |" * len(variants))
        for value in values:
            row = [f"{value:g}"] if key == "l2" else [f"{value:g}", f"{value * training.get('lr_scale', 1.0):.3g}"]
            for variant in variants:
                head = cell.get((variant, value))
                if head is None:
                    row.append("")
                    continue
                if head.get("diverged"):
                    text = "diverged"
                elif held:
                    text = f"{_pct(head.get('holdout_top1'))} / {_pct(head['top1'])}"
                else:
                    text = f"{_pct(head['top1'])} / {_pct(head['top5'])}"
                row.append("**" + text + "**" if _same_head(head, best, key) else text)
            lines.append("| " + " | ".join(row) + " |")
        if key == "l2" and best is not None and held:
            lines.append("")
            lines.append("The selected strength is refit on all of train: that head's validation accuracy is above.")
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


def plot_accuracy_vs_lr(heads: list[dict], path: str, title: str = "Linear probe", best: dict | None = None) -> str:
    """Top-1 validation accuracy vs the swept parameter (base learning rate or L2 strength, log scale), one line per
    feature variant; the `best` head (default: the best on validation) is ringed. When `best` was refit on all of
    train after its selection on a held-out part (L-BFGS protocol), its reported accuracy is drawn as a black diamond
    at the same strength, with a note saying why it differs from the ringed sweep point. Written as a PNG at `path`.
    Diverged heads and non-positive values (no log position) are left out; nothing left gives an empty frame."""
    key = _grid_key(heads)
    best = best if best is not None else best_head(heads)
    heads = [head for head in heads if head.get(key) is not None and head[key] > 0]
    refit = best if best is not None and best.get("holdout_top1") is not None and best.get(key, 0) > 0 else None
    width, height, left, right, top, bottom = 960, 560, 80, 230, 50, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(13)

    logs = [math.log10(head[key]) for head in heads] or [0.0]
    x_min, x_max = min(logs), max(logs)
    if x_max - x_min < 1e-9:
        x_min, x_max = x_min - 0.5, x_max + 0.5
    accuracies = [100 * head["top1"] for head in heads if not head.get("diverged")] or [0.0, 100.0]
    accuracies += [100 * refit["top1"]] if refit is not None else []
    low, high = min(accuracies) - 1, max(accuracies) + 1
    y_step = next((step for step in (1, 2, 5, 10) if high - low <= 5 * step), 20)
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
    ticks = [10.0**d for d in decades] if len(decades) >= 2 else sorted({h[key] for h in heads}) or [10.0**x_min]
    for lr in ticks:  # vertical grid and x labels
        x, _ = to_xy(lr, y_min)
        draw.line([(x, top), (x, top + plot_h)], fill=(225, 225, 225))
        draw.text((x, top + plot_h + 8), f"{lr:g}", fill="black", font=small, anchor="mt")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    draw.text((left + plot_w / 2, 18), title, fill="black", font=font, anchor="mm")
    x_label = "L2 strength (log scale)" if key == "l2" else "base learning rate (log scale)"
    draw.text((left + plot_w / 2, height - 20), x_label, fill="black", font=small, anchor="mm")
    draw.text((left, top - 8), "validation top-1 (%)", fill="black", font=small, anchor="lb")

    variants = list(dict.fromkeys(head["feature"] for head in heads))
    for index, variant in enumerate(variants):
        color = COLORS[index % len(COLORS)]
        points = sorted(
            (h[key], 100 * h["top1"], _same_head(h, best, key))
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
    if refit is not None:
        x, y = to_xy(refit[key], 100 * refit["top1"])
        draw.polygon([(x, y - 8), (x + 8, y), (x, y + 8), (x - 8, y)], fill="black")
        legend_y = top + 10 + 24 * len(variants)
        draw.polygon([(left + plot_w + 30, legend_y), (left + plot_w + 38, legend_y + 6), (left + plot_w + 30,
                      legend_y + 12), (left + plot_w + 22, legend_y + 6)], fill="black")  # fmt: skip
        draw.text((left + plot_w + 48, legend_y + 6), "reported head", fill="black", font=small, anchor="lm")
        note = (f"Ringed: selected on held-out train images ({_pct(refit['holdout_top1'])}% there). "
                f"Diamond: refit on all of train, the reported {_pct(refit['top1'])}%.")  # fmt: skip
        draw.text((left, height - 42), note, fill="black", font=small, anchor="lm")
    image.save(path)
    return path


def probe_model_card(config, results: dict, training_args) -> str:
    """The card of the saved probe classifier: encoder, head, validation accuracy, a usage snippet."""
    encoder = results["encoder"]["name_or_path"]
    head = results.get("finetune") or results.get("best") or {}
    settings = [("mode", results["mode"]), ("feature", head.get("feature"))]
    settings += [(key, head[key]) for key in ("solver", "l2", "base_learning_rate") if key in head]
    settings += [("protocol", (results.get("training") or {}).get("protocol"))]
    metrics = {f"validation_{key}": head[key] for key in ("top1", "top5") if head.get(key) is not None}
    return classifier_model_card(
        config,
        f"{results['mode'].capitalize()} probe of `{encoder}`",
        f"An image classifier made by rae_hf's `run_probe.py` ({results['mode']}) on the features of `{encoder}`; "
        "every head and the kNN numbers are in `probe_results.md`.",
        card_model_id(training_args),
        ["probe", results["mode"]],
        remote_code=False,
        image_processor=False,
        settings=[(key, value) for key, value in settings if value is not None],
        metrics=metrics,
        base_model=encoder,
    )


def write_results(output_dir: str, results: dict) -> dict[str, str]:
    """Write the JSON, then the Markdown table, then (with linear heads) the plot; returns the paths written by kind.

    Each file is written to a temporary name and renamed. A failure to draw the plot is logged and leaves the JSON and
    Markdown in place (the plot is decoration; the numbers are the result)."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {kind: os.path.join(output_dir, name) for kind, name in RESULT_FILES.items()}
    _write_text(paths["json"], json.dumps(results, indent=2))
    _write_text(paths["markdown"], markdown_report(results))
    if not results.get("heads"):
        return paths
    paths["plot"] = os.path.join(output_dir, PLOT_FILES[_grid_key(results["heads"])])
    try:
        title = f"Linear probe of {results['encoder']['name_or_path']}"
        plot_accuracy_vs_lr(results["heads"], paths["plot"], title, best=results.get("best"))
    except Exception as err:  # never lose a finished probe to its figure
        logger.warning("Could not draw %s (%s: %s); the results are in %s.", paths["plot"], type(err).__name__, err,
                       paths["json"])  # fmt: skip
        del paths["plot"]
    return paths


def _write_text(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


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
        best = results["best"]
        summary.update({f"probe/best_{k}": best[k] for k in ("top1", "top5", "base_learning_rate", "l2") if k in best})
        summary["probe/best_feature"] = results["best"]["feature"]
    for table_name in ("heads", "knn"):
        rows = results.get(table_name) or []
        if rows:
            columns = list(dict.fromkeys(column for row in rows for column in row))
            logs[f"probe/{table_name}"] = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    if results.get("finetune"):
        summary.update({f"probe/{k}": v for k, v in results["finetune"].items() if isinstance(v, float)})
    if "plot" in paths:
        logs[f"probe/{os.path.splitext(os.path.basename(paths['plot']))[0]}"] = wandb.Image(paths["plot"])
    summary["probe/warnings"] = len(results.get("warnings") or [])
    run.summary.update(summary)
    if logs:
        run.log(logs)
    if started:
        run.finish()
