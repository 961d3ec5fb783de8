"""What does the suite's machinery cost over a plain PyTorch loop?

    python benchmarks/trainer_overhead.py [--task recognition2d] [--epochs 3] [--data_root data]

Trains a classification task's default model on its default data twice in one process,
from the same initial weights: with a plain PyTorch loop (forward, cross-entropy,
backward, AdamW step over the same DataLoader), and with Lightning's Trainer running the
task's module (its metrics and logging included; validation, checkpoints and loggers off,
so both do the same training work). Prints both times and their ratio: the ratio, not the
seconds, is the figure to compare across machines.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from cnnsuite.checkpoint import task_classes

TASKS = Path(__file__).resolve().parents[1] / "tasks"


def build(task: str, data_root: str):
    config = yaml.safe_load((TASKS / task / "config.yaml").read_text())
    data = task_classes()[config["data"]["class_path"]](data_root=data_root, **config["data"].get("init_args", {}))
    links = {"num_classes": data.num_classes, "in_channels": data.in_channels, "class_names": data.class_names}
    model = task_classes()[config["model"]["class_path"]](**config["model"].get("init_args", {}), **links)
    lr = config.get("optimizer", {}).get("init_args", {}).get("lr", 1e-3)
    return model, data, lr


def plain_loop(model, loader, lr: float, epochs: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            x, y = batch[0], batch[1]
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def lightning_loop(model, loader, lr: float, epochs: int) -> float:
    model.configure_optimizers = lambda: torch.optim.AdamW(model.parameters(), lr=lr)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="recognition2d", choices=["recognition2d", "biomedical3d"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data_root", default="data")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, data, lr = build(args.task, args.data_root)
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    twin = copy.deepcopy(model)
    plain_loop(copy.deepcopy(model), loader, lr, 1)  # warm-up: first-touch allocations, caches
    plain = plain_loop(twin, loader, lr, args.epochs)
    suite = lightning_loop(model, loader, lr, args.epochs)
    print(f"{args.task}, {args.epochs} epochs of {len(loader)} batches, {torch.get_num_threads()} threads")
    print(f"  plain PyTorch loop: {plain:.2f} s")
    print(f"  Lightning + task module: {suite:.2f} s")
    print(f"  ratio: {suite / plain:.2f}")


if __name__ == "__main__":
    main()
