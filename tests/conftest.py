from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def task_config(task: str) -> str:
    return str(ROOT / "tasks" / task / "config.yaml")


def fit(task: str, tmp_path: Path, *extra: str) -> Path:
    """``cnnsuite fit`` with the task's config, in this process, everything under
    ``tmp_path``; returns the run folder."""
    from cnnsuite.cli import main

    main(
        [
            "fit",
            "--config", task_config(task),
            "--data.data_root", str(tmp_path / "data"),
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--debug",  # errors arrive as exceptions, not one line and exit status 2
            *extra,
        ]
    )  # fmt: skip
    return tmp_path / "runs" / "version_0"


def make_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class=8, seed=0) -> Path:
    """A tiny user folder: RGB and gray images of different sizes; class = bright quadrant."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(20, 48, size=2)
            image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
            image[: h // 2 if c % 2 == 0 else h, w // 2 * (c // 2) :] += 150
            pil = Image.fromarray(image)
            (pil.convert("L") if i % 3 == 1 else pil).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "user_images")


def script_val_acc(monkeypatch, scripted: dict[int, float]) -> None:
    """Make classification tasks log ``scripted[epoch]`` as ``val/acc`` (and no other
    validation metric), so which checkpoint is "best" is known in advance."""
    from cnnsuite.training.classification import ClassificationModule

    log_metrics = ClassificationModule._log_metrics

    def scripted_log(self, stage):
        if stage != "val":
            return log_metrics(self, stage)
        self.val_metrics.reset()
        self.log("val/acc", scripted[self.current_epoch])

    monkeypatch.setattr(ClassificationModule, "_log_metrics", scripted_log)


def watch_network_and_plots(monkeypatch, module_class) -> list[str]:
    """Record in order each run of ``module_class``'s network (``"forward"``) and the start of
    its evaluation pictures (``"plots"``): pictures drawn from the test pass's outcomes leave
    ``"plots"`` last, with no run of the network after it."""
    calls: list[str] = []
    forward, write_plots = module_class.forward, module_class.write_plots

    def counted_forward(self, *args, **kwargs):
        calls.append("forward")
        return forward(self, *args, **kwargs)

    def plots(self, *args, **kwargs):
        calls.append("plots")
        return write_plots(self, *args, **kwargs)

    monkeypatch.setattr(module_class, "forward", counted_forward)
    monkeypatch.setattr(module_class, "write_plots", plots)
    return calls
