"""Every task from a ResNet-18 weight file in torchvision's published layout, against random init.

    python benchmarks/pretrained.py [--out runs/pretrained] [--tasks detection2d video3d] [--epochs 2]

No ImageNet file can be fetched where this runs, so the file is made here, as a user's
``resnet18-f37072fd.pth`` is laid out: ``torchvision_resnet18`` is trained as recognition2d's
backbone on its embedded handwritten digits (real scans), and its backbone is written as
torchvision's ``resnet18`` state dict — our stage names mapped back to torchvision's
(the inverse of :data:`cnnsuite.training.pretrained.RESNET_NAMES`), the grey stem kernel spread
over three RGB channels (each a third of it: a grey image given as RGB gets the same response),
checked to load strictly into ``torchvision.models.resnet18()`` but for ``fc.*``. The digit
tasks share one split of the scans (no test scan of any task is in this training set).

Then each task trains twice with the same config, epochs and seed: random init, and
``--model.backbone_weights torchvision:<that file>``. ``results.json`` and ``results.md`` in
``--out`` hold each run's test metrics (the run's own evaluation of its best checkpoint) and
wall time. A user with torchvision's real file gives its path (or
``torchvision:ResNet18_Weights.IMAGENET1K_V1``) to the same commands (printed in results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from cnnsuite.training.pretrained import RESNET_NAMES
from cnnsuite.training.transfer import adapt_in_channels

ROOT = Path(__file__).resolve().parents[1]
RESNET18 = ["--model.backbone", "torchvision_resnet18", "--model.backbone_kwargs", "{}"]
#: task → (settings beside the config that make it a ResNet-18 run, epochs, metrics reported)
TASKS = {
    "recognition2d": (RESNET18, 2, ["test/acc"]),
    "localization2d": (RESNET18, 2, ["test/loc_acc", "test/miou", "test/acc"]),
    "detection2d": (RESNET18, 1, ["test/map", "test/map_50"]),
    # MONAI's ResNet-18 in 3D; the 2D file is inflated (I3D). Its stem strides 2 in every axis, and its
    # 1x1 shortcut convolutions have no bias, as torchvision's.
    "biomedical3d": (
        ["--model.backbone", "monai_resnet18",
         "--model.backbone_kwargs", "{conv1_t_stride: 2, bias_downsample: false}"],  # fmt: skip
        2,
        ["test/acc", "test/auroc"],
    ),
    # The stem keeps every frame (stride 1 in time, 2 in space); 16 frames reach the network's
    # total stride of 16 in time.
    "video3d": (
        [
            "--model.backbone", "monai_resnet18",
            "--model.backbone_kwargs", "{conv1_t_stride: [1, 2, 2], bias_downsample: false}",
            "--data.frames_per_clip", "16",
        ],
        2,
        ["test/acc", "test/video_acc"],
    ),
    # The 2D reference on bands as channels: the RGB stem's kernels are spread over the 13 bands.
    "multispectral3d": (
        [*RESNET18, "--model.spatial_dims", "2", "--data.layout", "channels"],
        2,
        ["test/acc", "test/kappa"],
    ),
}  # fmt: skip
PRETRAIN_EPOCHS = 3


def fit(task: str, args: list[str], root: Path) -> tuple[dict[str, float], float]:
    """One ``cnnsuite fit`` (which evaluates its best checkpoint) in its own process; its test
    metrics and wall seconds."""
    command = [sys.executable, "-m", "cnnsuite", "fit", "--config", str(ROOT / "tasks" / task / "config.yaml"),
               "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", *args]  # fmt: skip
    print(" ".join(command[2:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (root / "log.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "log.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{task}: cnnsuite fit failed ({root / 'log.txt'}):\n{done.stderr[-3000:]}")
    metrics = json.loads(max(root.glob("version_*/evaluation/metrics.json")).read_text())
    return metrics, seconds


def torchvision_file(checkpoint: Path, out: Path) -> Path:
    """recognition2d's backbone in ``checkpoint`` written as torchvision's ``resnet18`` state dict."""
    import torchvision

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    theirs = {ours: name for name, ours in RESNET_NAMES.items()}
    published = {}
    for key, value in state.items():
        if not key.startswith("backbone."):
            continue
        key = key[len("backbone.") :]
        prefix = next(p for p in theirs if key.startswith(p))
        published[theirs[prefix] + key[len(prefix) :]] = value
    published["conv1.weight"] = adapt_in_channels(published["conv1.weight"], 3, "mean")
    result = torchvision.models.resnet18().load_state_dict(published, strict=False)
    if result.unexpected_keys or sorted(result.missing_keys) != ["fc.bias", "fc.weight"]:
        raise SystemExit(f"not torchvision's resnet18 layout: {result}")
    torch.save(published, out)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| task | metric | random init | from the file | change | time random / file (s) | epochs |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        for key in row["metrics"]:
            a, b = row["random"][key], row["pretrained"][key]
            lines.append(f"| {row['task']} | `{key}` | {a:.3f} | {b:.3f} | {b - a:+.3f} | "
                         f"{row['seconds'][0]:.0f} / {row['seconds'][1]:.0f} | {row['epochs']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pretrained")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--epochs", type=int, help="every task's epochs (default: each task's own, see TASKS)")
    parser.add_argument("--pretrain_epochs", type=int, default=PRETRAIN_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    out, seed = options.out.resolve(), ["--seed_everything", str(options.seed)]
    started = time.perf_counter()

    file = out / "resnet18-digits.pth"
    if not file.is_file():
        root = out / "pretrain"
        _, pretrain_seconds = fit("recognition2d", [*RESNET18, *seed, "--trainer.max_epochs",
                                                    str(options.pretrain_epochs)], root)  # fmt: skip
        torchvision_file(max(root.glob("version_*/checkpoints/best.ckpt")), file)
        print(f"{file}: written ({pretrain_seconds:.0f} s of training)", flush=True)

    rows = []
    for task in options.tasks:
        settings, epochs, keys = TASKS[task]
        epochs = options.epochs or epochs
        common = [*settings, *seed, "--trainer.max_epochs", str(epochs)]
        random, random_s = fit(task, common, out / task / "random")
        pretrained, pretrained_s = fit(task, [*common, "--model.backbone_weights", f"torchvision:{file}"],
                                       out / task / "pretrained")  # fmt: skip
        rows.append({"task": task, "epochs": epochs, "metrics": keys, "settings": settings,
                     "random": {k: random[k] for k in keys}, "pretrained": {k: pretrained[k] for k in keys},
                     "seconds": [random_s, pretrained_s]})  # fmt: skip
        write_results(out, file, rows, time.perf_counter() - started)
    print((out / "results.md").read_text())


def write_results(out: Path, file: Path, rows: list[dict], total: float) -> None:
    """``results.json`` and ``results.md`` of the tasks run so far."""
    machine = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"file": str(file), "seconds": total, "machine": machine,
                                                  "rows": rows}, indent=1))  # fmt: skip
    commands = "\n".join(
        f'    make train TASK={row["task"]} ARGS="{" ".join(_quoted(row["settings"]))} '
        f'--model.backbone_weights torchvision:resnet18-f37072fd.pth"'
        for row in rows
    )
    (out / "results.md").write_text(
        f"# Each task from a torchvision-layout ResNet-18 file pretrained on digits\n\n"
        f"`python benchmarks/pretrained.py` ({total / 60:.1f} min, {machine}); same config, epochs and seed "
        f"both ways; test metrics of each run's best checkpoint.\n\n{table(rows)}\n\n"
        f"With a real file (torchvision's ImageNet ResNet-18, put on disk by hand):\n\n{commands}\n"
    )


def _quoted(args: list[str]) -> list[str]:
    return [f"'{a}'" if any(c in a for c in " {}[],") else a for a in args]


if __name__ == "__main__":
    main()
