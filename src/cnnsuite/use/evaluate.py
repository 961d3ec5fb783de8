"""Checkpoint → metrics.json, plots and report.md, on the run's own test split or other data.

A checkpoint rebuilds its model and datamodule by itself (:func:`cnnsuite.trust.checkpoint.rebuild`:
saved hyperparameters, cnnsuite's own classes only), and the split it carries makes the test
split exactly the one the run held out. Pointed at another folder (``data_dir``) of the
checkpoint's classes, or of some of them, every sample of that folder is tested, labelled by
class name. Several checkpoints give one
comparison table of their headline metrics (:func:`compare`).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt

from ..errors import ConfigError
from ..jsonout import shown_metric, strict_json
from ..training.runs import default_output, output_folder, run_folder
from ..trust.checkpoint import data_options, load_checkpoint, rebuild


def evaluation_dir(
    ckpt_path: str | Path, out_dir: str | Path | None = None, other_data: str | Path | None = None
) -> Path:
    """``out_dir``, else ``<run folder>/evaluation`` (``evaluation-<folder name>`` on
    ``other_data``, any folder but the one the run read: the run's own evaluation is never
    overwritten by one on other data, however alike its files are named), or
    ``./evaluation`` for a checkpoint outside a run's ``checkpoints/`` folder."""
    if out_dir:
        return Path(out_dir)
    name = f"evaluation-{Path(other_data).expanduser().resolve().name}" if other_data else "evaluation"
    return default_output(ckpt_path, name)


def evaluate(
    ckpt_path: str | Path,
    out_dir: str | Path | None = None,
    accelerator: str = "auto",
    data: dict | None = None,
) -> dict[str, float]:
    """Test ``ckpt_path`` and write ``metrics.json``, plots and ``report.md`` into ``out_dir``
    (see :func:`evaluation_dir`). ``data``: where the data is and how it is loaded
    (``data_dir``, ``data_root``, ``num_workers`` ...; see :func:`~cnnsuite.trust.checkpoint.rebuild`):
    the run's own data scores its test split, other data is tested whole. Returns the metrics."""
    return evaluate_into(ckpt_path, out_dir, accelerator, data)[0]


def evaluate_into(
    ckpt_path: str | Path,
    out_dir: str | Path | None = None,
    accelerator: str = "auto",
    data: dict | None = None,
    progress_bar: bool = True,
) -> tuple[dict[str, float], Path]:
    """:func:`evaluate`, and the folder it wrote; ``progress_bar`` false: the test pass shows
    none (the evaluation after a fit run without one)."""
    ckpt_path, given = Path(ckpt_path), bool(out_dir)
    run_dir = run_folder(ckpt_path)
    model, datamodule = rebuild(ckpt_path, run_dir, data)
    if not datamodule.splits["test"]:
        raise ConfigError(f"{ckpt_path}: its run's test split is empty: nothing to evaluate (give --data.data_dir)")
    elsewhere = datamodule.tests_other_data or datamodule.read_elsewhere
    out_dir = evaluation_dir(ckpt_path, out_dir, datamodule.root if elsewhere else None)
    datamodule.check_writes_outside("out", out_dir)
    output_folder(out_dir, given, marker="evaluation.json")
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        default_root_dir=out_dir,
    )
    results = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    metrics = {key: float(value) for key, value in sorted(results.items())}
    (out_dir / "metrics.json").write_text(strict_json(metrics, indent=1) + "\n")
    plots = model.write_plots(out_dir, datamodule)
    if run_dir is not None:
        curves = plot_training_curves(run_dir / "metrics.csv", out_dir / "training_curves.png", model.monitor)
        plots += [curves] if curves else []
    write_report(out_dir / "report.md", ckpt_path, datamodule, metrics, plots)
    return metrics, out_dir


def compare(
    ckpt_paths: list[str | Path], out_dir: str | Path, accelerator: str = "auto", data: dict | None = None
) -> list[dict]:
    """Evaluate each checkpoint into ``out_dir/<n>-<run>-<file>/`` and write
    ``comparison.md`` and ``comparison.json``: one row per checkpoint, its headline metrics
    side by side, and the data each was tested on (a table is only fair on the same data)."""
    for ckpt in ckpt_paths:  # every file a checkpoint before the first is evaluated (memory-mapped: no weights read)
        load_checkpoint(ckpt)
    out_dir = output_folder(Path(out_dir), given=True, marker="comparison.json")  # and each checkpoint's folder
    rows = []
    for number, ckpt in enumerate(ckpt_paths, start=1):
        ckpt = Path(ckpt)
        name = f"{number}-{ckpt.parent.parent.name}-{ckpt.stem}"
        metrics = evaluate(ckpt, out_dir / name, accelerator, data)
        report = json.loads((out_dir / name / "evaluation.json").read_text())
        rows.append({"checkpoint": str(ckpt), "folder": name, **report, "metrics": metrics})
    (out_dir / "comparison.json").write_text(strict_json(rows, indent=1) + "\n")
    keys = sorted({k for row in rows for k in row["metrics"] if k.count("/") == 1})
    lines = [
        "# Comparison",
        "",
        "| checkpoint | data | test samples | " + " | ".join(f"`{k}`" for k in keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for row in rows:
        values = [shown_metric(row["metrics"][k]) if k in row["metrics"] else "–" for k in keys]
        lines.append(
            f"| `{row['checkpoint']}` | `{row['data']}` | {row['test_samples']} | " + " | ".join(values) + " |"
        )
    if len({(row["data"], row["test_samples"]) for row in rows}) > 1:
        lines += ["", "The checkpoints were tested on different data: their figures are not comparable."]
    (out_dir / "comparison.md").write_text("\n".join(lines) + "\n")
    return rows


def plot_training_curves(metrics_csv: Path, out_path: Path, monitor: str) -> Path | None:
    """Loss and the monitored metric per epoch, from the run's CSV log. The log is a file in
    the run folder, not the checkpoint: a cell that is not a number (an edited or cut log)
    is left out of the curves, and said, rather than stop the evaluation that draws them."""
    if not metrics_csv.is_file():
        return None
    series: dict[str, dict[int, float]] = {}
    skipped = 0
    try:
        with metrics_csv.open(newline="") as f:
            for row in csv.DictReader(f):
                epoch = _number(row.get("epoch"))
                if epoch is None or epoch != int(epoch):
                    skipped += bool(row.get("epoch"))
                    continue
                for key, value in row.items():
                    if value and key not in ("epoch", "step"):
                        number = _number(value)
                        # NaN: a value undefined on that epoch's data (a class its split lacks), no point
                        skipped += number is None and value.strip().lower() != "nan"
                        if number is not None:
                            series.setdefault(str(key), {})[int(epoch)] = number
    except (csv.Error, UnicodeDecodeError, OSError) as err:
        warnings.warn(f"{metrics_csv}: not readable as the run's CSV log ({err}); no training curves", stacklevel=2)
        return None
    if skipped:
        warnings.warn(f"{metrics_csv}: {skipped} cells are not numbers; left out of the training curves", stacklevel=2)
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


def _number(text: str | None) -> float | None:
    """A CSV cell as a finite number, else None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def write_report(path: Path, ckpt_path: Path, datamodule, metrics: dict[str, float], plots: list[Path]) -> None:
    """``report.md`` for people, and ``evaluation.json`` beside it: what was tested on what."""
    facts = {"data": str(datamodule.root), "test_samples": len(datamodule.datasets["test"])}
    (path.parent / "evaluation.json").write_text(json.dumps(facts, indent=1) + "\n")
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
        *(f"| `{k}` | {shown_metric(v)} |" for k, v in headline.items()),
    ]
    if per_class:
        lines += [
            "",
            "Per class (n/a: no sample of the class in the test split):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| `{k}` | {shown_metric(v)} |" for k, v in per_class.items()]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def print_metrics(metrics: dict[str, float], out_dir: Path) -> None:
    headline = {k: v for k, v in metrics.items() if k.count("/") == 1}
    print("\n".join(f"  {k:<16} {shown_metric(v)}" for k, v in headline.items()))
    print(f"evaluation: {out_dir}/ (metrics.json, report.md, plots)")


def evaluate_main(argv: list[str]) -> None:
    from ..commands import add_accelerator, add_data, add_out, command_parser

    parser = command_parser(
        "evaluate", ckpt="many",
        description="Evaluate checkpoints on their run's test split (or on other data): metrics.json, report.md "
        "and plots; several checkpoints also give comparison.md and comparison.json.",
    )  # fmt: skip
    add_out(
        parser,
        "output folder (default: <run folder>/evaluation, ./evaluation for a checkpoint outside a run's checkpoints/ "
        "folder; with several checkpoints, ./comparison)",
    )
    add_accelerator(parser)
    add_data(parser)
    args, extra = parser.parse_known_args(argv)
    data = data_options(args, extra, parser)
    if len(args.ckpt) == 1:
        print_metrics(*evaluate_into(args.ckpt[0], args.out, accelerator=args.accelerator, data=data))
        return
    out_dir = Path(args.out or "comparison")
    compare(args.ckpt, out_dir, accelerator=args.accelerator, data=data)
    print((out_dir / "comparison.md").read_text())
    print(f"comparison: {out_dir}/ (comparison.md, comparison.json, one evaluation folder per checkpoint)")
