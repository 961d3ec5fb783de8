"""What recognition2d predicts and how it is scored: one class per image.

It is the shared :class:`~cnnsuite.training.classification.ClassificationModule` in 2D; the default
config makes it LeNet-5 (C1-S2-C3-S4-C5 backbone, F6 = 84-unit hidden layer). Evaluation
adds a picture of test images with their true and predicted labels, mistakes first.
"""

from __future__ import annotations

from pathlib import Path

from cnnsuite.training.classification import ClassificationModule
from cnnsuite.use.tiles import draw_tiles, mistakes_first, stretched


class RecognitionModule(ClassificationModule):
    def write_plots(self, out_dir: Path, datamodule) -> list[Path]:
        paths = super().write_plots(out_dir, datamodule)
        return paths + [self._plot_predictions(Path(out_dir), datamodule.datasets["test"])]

    def _plot_predictions(self, out_dir: Path, dataset, count: int = 24) -> Path:
        """The test pass's mistakes first, then correct images, ``count`` in all; only the images
        shown are read again."""
        _, truth, predicted = self.tested_in_words(dataset)
        right = [t == p for t, p in zip(truth, predicted, strict=True)]
        order = mistakes_first(right, count)
        columns = 8
        tiles = [stretched(dataset[i][0].float().permute(1, 2, 0).numpy()) for i in order]
        labels = [(f"{truth[i]}→{predicted[i]}", "green" if right[i] else "red") for i in order]
        rows = range(0, len(order), columns)
        return draw_tiles(
            [tiles[r : r + columns] for r in rows], out_dir / "predictions.png",
            "test images: true→predicted (mistakes first, in red)", 1.3,
            tile_labels=[labels[r : r + columns] for r in rows], fontsize=9,
        )  # fmt: skip
