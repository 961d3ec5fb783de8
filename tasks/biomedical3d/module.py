"""What biomedical3d predicts and how it is scored: one class per volume.

The shared :class:`~cnnsuite.training.classification.ClassificationModule` with ``spatial_dims=3``;
accuracy, macro F1 and one-vs-rest AUROC come from it. Evaluation adds orthogonal slices of
test volumes (sagittal, coronal, axial through each volume's brightest region) with their
true and predicted labels.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.nn import functional as F

from cnnsuite.training.classification import ClassificationModule


class Biomedical3DModule(ClassificationModule):
    def write_plots(self, out_dir: Path, datamodule) -> list[Path]:
        paths = super().write_plots(out_dir, datamodule)
        return paths + [self._plot_slices(Path(out_dir), datamodule.datasets["test"], datamodule.slice_views)]

    def _plot_slices(self, out_dir: Path, dataset, views: tuple[str, str, str], count: int = 6) -> Path:
        """The first ``count`` test volumes (all, where fewer) with their labels, predicted as the
        test pass did; ``views``: what a slice across each axis shows (``sagittal``, or ``axis 0``)."""
        probs, _ = self.tested(dataset)
        count = min(count, len(dataset))  # a row a volume: no empty axes under a short test split
        fig, axes = plt.subplots(count, 3, figsize=(6.6, 2.3 * count), squeeze=False)
        for row, index in zip(axes, range(count), strict=True):
            item = dataset[index]  # MONAI datasets give dictionaries
            volume, label = item["image"], item["label"]
            said = self.prediction_text(probs[index])
            truth = self.target_text(label)
            centre = _brightest_region(volume[0])
            slices = (volume[0, centre[0]], volume[0, :, centre[1]], volume[0, :, :, centre[2]])
            for ax, view, name in zip(row, slices, views, strict=True):
                ax.imshow(view.cpu().T, cmap="gray", origin="lower")
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_xlabel(name, fontsize=8)
            right = said == truth
            row[0].set_ylabel(
                f"true {truth}\npred {said}",
                color="green" if right else "red",
                fontsize=9,
            )
        fig.suptitle("test volumes: orthogonal slices through the brightest region")
        fig.tight_layout()
        path = out_dir / "slices.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _brightest_region(volume: torch.Tensor) -> tuple[int, int, int]:
    """Voxel index of the maximum after a 5³ box blur (robust to single noisy voxels)."""
    blurred = F.avg_pool3d(volume[None, None].float(), 5, stride=1, padding=2)[0, 0]
    return tuple(int(i) for i in torch.unravel_index(blurred.argmax(), blurred.shape))
