"""Checkpoint → metrics.json, plots and report.md, on the run's own test split.

A checkpoint rebuilds its model and datamodule by itself (saved hyperparameters and the
class paths recorded by :class:`~cnnsuite.task.TaskModule`), and the run's saved
``splits.json`` makes the test split exactly the one the run held out.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch

from .task import import_class


def evaluation_dir(ckpt_path: str | Path, out_dir: str | Path | None = None) -> Path:
    return Path(out_dir) if out_dir else Path(ckpt_path).parent.parent / "evaluation"


def load_checkpoint(ckpt_path: str | Path) -> dict:
    """The checkpoint's contents, loaded with ``weights_only=True`` (no code runs)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"{path}: cannot load as a checkpoint ({type(err).__name__}: {err})") from None
    if "cnnsuite_classes" not in checkpoint or "datamodule" not in checkpoint["cnnsuite_classes"]:
        raise ValueError(f"{path}: not a checkpoint written by cnnsuite fit (no 'cnnsuite_classes' entry)")
    return checkpoint


def rebuild(ckpt_path: str | Path, split_file: str | Path | None = None):
    """``(model, datamodule)`` from a checkpoint; ``split_file`` pins the test split."""
    checkpoint = load_checkpoint(ckpt_path)
    classes = checkpoint["cnnsuite_classes"]
    model_cls, data_cls = import_class(classes["model"]), import_class(classes["datamodule"])
    model = model_cls.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    data_args = {k: v for k, v in checkpoint.get("datamodule_hyper_parameters", {}).items() if not k.startswith("_")}
    if split_file is not None:
        data_args["split_file"] = str(split_file)
    return model, data_cls(**data_args)


def evaluate(ckpt_path: str | Path, out_dir: str | Path | None = None, accelerator: str = "auto") -> dict[str, float]:
    """Test ``ckpt_path`` and write ``metrics.json``, plots and ``report.md`` into ``out_dir``
    (default ``<run folder>/evaluation``). Returns the metrics."""
    ckpt_path = Path(ckpt_path)
    run_dir = ckpt_path.parent.parent
    split_file = run_dir / "splits.json"
    model, datamodule = rebuild(ckpt_path, split_file if split_file.is_file() else None)
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
