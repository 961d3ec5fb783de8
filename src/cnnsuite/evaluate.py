"""Checkpoint → metrics.json, plots and report.md, on the run's own test split.

A checkpoint rebuilds its model and datamodule by itself (:func:`cnnsuite.checkpoint.rebuild`:
saved hyperparameters, cnnsuite's own classes only), and the split it carries makes the test
split exactly the one the run held out.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt

from .checkpoint import rebuild


def evaluation_dir(ckpt_path: str | Path, out_dir: str | Path | None = None) -> Path:
    return Path(out_dir) if out_dir else Path(ckpt_path).parent.parent / "evaluation"


def evaluate(ckpt_path: str | Path, out_dir: str | Path | None = None, accelerator: str = "auto") -> dict[str, float]:
    """Test ``ckpt_path`` and write ``metrics.json``, plots and ``report.md`` into ``out_dir``
    (default ``<run folder>/evaluation``). Returns the metrics."""
    ckpt_path = Path(ckpt_path)
    run_dir = ckpt_path.parent.parent
    model, datamodule = rebuild(ckpt_path, run_dir)
    out_dir = evaluation_dir(ckpt_path, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    results = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    metrics = {key: float(value) for key, value in sorted(results.items())}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    plots = model.write_plots(out_dir, datamodule)
    curves = plot_training_curves(run_dir / "metrics.csv", out_dir / "training_curves.png", model.monitor)
    plots += [curves] if curves else []
    write_report(out_dir / "report.md", ckpt_path, datamodule, metrics, plots)
    return metrics


def plot_training_curves(metrics_csv: Path, out_path: Path, monitor: str) -> Path | None:
    """Loss and the monitored metric per epoch, from the run's CSV log."""
    if not metrics_csv.is_file():
        return None
    series: dict[str, dict[int, float]] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            for key, value in row.items():
                if value and key not in ("epoch", "step"):
                    series.setdefault(key, {})[int(row["epoch"])] = float(value)
    panels = [
        [k for k in ("train/loss", "val/loss") if k in series],
        [k for k in (f"train/{monitor.split('/', 1)[-1]}", monitor) if k in series],
    ]
    panels = [keys for keys in panels if keys]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, keys in zip(axes.flat, panels, strict=True):
        for key in keys:
            epochs = sorted(series[key])
            ax.plot(epochs, [series[key][e] for e in epochs], marker=".", label=key)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def write_report(path: Path, ckpt_path: Path, datamodule, metrics: dict[str, float], plots: list[Path]) -> None:
    headline = {k: v for k, v in metrics.items() if k.count("/") == 1}
    per_class = {k: v for k, v in metrics.items() if k.count("/") == 2}
    lines = [
        "# Evaluation report",
        "",
        f"- checkpoint: `{ckpt_path}`",
        f"- data: `{datamodule.root}`: {len(datamodule.datasets['test'])} test samples, "
        f"{datamodule.num_classes} classes",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| `{k}` | {v:.4f} |" for k, v in headline.items()),
    ]
    if per_class:
        lines += ["", "Per class:", "", "| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4f} |" for k, v in per_class.items()]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    path.write_text("\n".join(lines) + "\n")
