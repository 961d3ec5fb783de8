"""What multispectral3d predicts and how it is scored: one land-cover class per patch.

The shared :class:`~cnnsuite.training.classification.ClassificationModule`; with ``spatial_dims: 3``
the spectrum is the depth axis (input 1 × bands × H × W) and every filter is
spectral-spatial. Cohen's kappa is added to the shared metrics (agreement beyond chance, the
remote-sensing habit). Evaluation adds test patches in true and false colour with their
labels, mistakes first, and each class's mean spectrum on the tested patches with its spread.
A prediction on a raw GeoTIFF is drawn by the shared classifier on the patch's true-colour
composite (the ``view`` the datamodule's ``read_input`` gives).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassCohenKappa

from cnnsuite.training.classification import ClassificationModule
from cnnsuite.use.tiles import draw_tiles, mistakes_first, stretched

from .datamodule import FALSE_COLOUR, TRUE_COLOUR, composite
from .default_data import BANDS as ALL_BANDS
from .default_data import WAVELENGTHS


class MultispectralModule(ClassificationModule):
    metric_modes = {**ClassificationModule.metric_modes, "kappa": "max"}

    def configure_metrics(self, stage: str) -> MetricCollection:
        metrics = super().configure_metrics(stage)
        if stage != "train" and not self.multilabel:
            metrics.add_metrics({"kappa": MulticlassCohenKappa(self.hparams.num_classes)})
        return metrics

    def write_plots(self, out_dir: Path, datamodule) -> list[Path]:
        out_dir = Path(out_dir)
        paths = super().write_plots(out_dir, datamodule)
        paths.append(self._plot_predictions(out_dir, datamodule))
        paths.append(self._plot_spectra(out_dir, datamodule))
        return paths

    def _plot_predictions(self, out_dir: Path, datamodule, count: int = 12) -> Path:
        """The test pass's mistakes first, then correct patches, each kind spread over the split
        (its files are sorted by class); each in true and false colour (composites drawn from
        the raw reflectances, so they need the bands they name; without either, the mean of the
        bands)."""
        dataset = datamodule.datasets["test"]
        _, truth, said = self.tested_in_words(dataset)
        order = mistakes_first([t == p for t, p in zip(truth, said, strict=True)], count)
        composites = [c for c in (TRUE_COLOUR, FALSE_COLOUR) if set(c) <= set(datamodule.band_names)]
        rows = [("true colour\n" if c == TRUE_COLOUR else "false colour\n") + "/".join(c) for c in composites]
        raws = [dataset.raw[i] for i in order]  # the reflectances as the dataset decoded them
        if composites:
            grid = [[composite(raw, datamodule.band_names, bands) for raw in raws] for bands in composites]
        else:  # no band triple to show in colour: the mean over the bands
            grid, rows = [[stretched(raw.mean(0)[..., None]) for raw in raws]], ["mean of the bands"]
        return draw_tiles(
            grid, out_dir / "predictions.png", "test patches: true → predicted (mistakes first, in red)", 1.6,
            row_labels=[(text, "black") for text in rows],
            column_labels=[(f"{truth[i]}\n→ {said[i]}", "green" if truth[i] == said[i] else "red") for i in order],
        )  # fmt: skip

    def _plot_spectra(self, out_dir: Path, datamodule, per_class: int = 40) -> Path:
        """Each class's mean spectrum over up to ``per_class`` test patches, ± one standard
        deviation across patches, in reflectance, bands in wavelength order where known. The
        test split is the data this evaluation scored (a whole folder, on other data) and is
        decoded already; the training split would be read again just for this picture."""
        labels = dict(datamodule.samples())
        dataset = datamodule.datasets["test"]  # its reflectances as it decodes them (cache, shards or files)
        position = {sample_id: n for n, sample_id in enumerate(dataset.ids)}
        tested = dataset.ids
        names = datamodule.band_names
        known = all(b in ALL_BANDS for b in names)
        x = [WAVELENGTHS[ALL_BANDS.index(b)] for b in names] if known else list(range(len(names)))
        order = np.argsort(x)
        fig, ax = plt.subplots(figsize=(8, 5))
        for index, name in enumerate(self.class_names):
            ids = [i for i in tested if self.carries(labels[i], index)][:per_class]
            if not ids:
                continue
            spectra = datamodule.reflectance(np.stack([dataset.raw[position[i]].mean(axis=(1, 2)) for i in ids]))
            mean, std = spectra.mean(0)[order], spectra.std(0)[order]
            xs = np.asarray(x)[order]
            colour = plt.cm.tab20(index % 20)
            ax.plot(xs, mean, marker=".", label=name, color=colour)
            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.15)
        ax.set_xticks(np.asarray(x)[order], [names[i] for i in order], rotation=90, fontsize=7)
        ax.set_xlabel("band (by centre wavelength)" if known else "band")
        ax.set_ylabel("reflectance")
        ax.set_title("mean spectrum per class (test patches), ± 1 s.d. across patches")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / "class_spectra.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
