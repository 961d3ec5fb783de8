"""localization2d's data module: images with exactly one labelled box each, from a user's
folder (the formats of :mod:`.readers`) or the embedded default (:mod:`.default_data`).

Every error a user's files can cause — a bad row (see :mod:`.readers`), a box outside its
image, a corrupt image — names the file and the row (or annotation) and is listed with all
the others at once; ``on_bad_file: skip`` leaves those samples out with one warning naming
each.

Boxes travel with their image through ``torchvision.transforms.v2`` as
``tv_tensors.BoundingBoxes``, so resizing, crops and flips move them with the pixels. An
augmentation that would push the box out of the image is drawn again (and after a few
tries the sample is only resized): a sample is never dropped or left with a wrong box.

A sample is ``(image float (C, S, S), label, box (4,))`` with the box as ``x1, y1, x2, y2``
in fractions of the model input's width and height (IoU is the same in any such scale).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cnnsuite.data import (
    BadFileError,
    ImageDataModule,
    Input,
    check_folder,
    collect_bad,
    describe_image_preprocessing,
    image_channels,
    image_size,
    read_image,
    report_bad_files,
)
from cnnsuite.data.augment import BatchBoxAffine
from cnnsuite.data.coco import AnnotationError, box_error, size_error
from cnnsuite.data.digits import digit_scans, digit_split
from cnnsuite.data.images import checked_size, read_image_with_picture
from cnnsuite.data.splits import STAGES, ListedSplits
from cnnsuite.errors import ConfigError

from .default_data import DEFAULT_CANVASES_PER_SCAN, DEFAULT_SEED, compose_canvas
from .readers import CSV_COLUMNS, FORMATS, Sample, detect_format, read_csv_labels, read_cub, read_detection_folder


class BoxTransform:
    """``finish`` (normalisation: a ``transforms.v2`` transform) applied to a batch of images
    of one size and their boxes, one a sample, together; the boxes come out in fractions of
    the result. Training's random moves come after it, on the model's device
    (:meth:`LocalizationDataModule.augment_batch`). :meth:`image`
    runs ``finish`` on an image without a box (prediction on a raw file)."""

    def __init__(self, finish: v2.Transform) -> None:
        self.finish = finish

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``(N, C, H, W)``, ``boxes`` ``(N, 4)`` ``x1, y1, x2, y2`` in their pixels."""
        images = tv_tensors.Image(images)
        boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(images.shape[-2:]),
                                         dtype=torch.float32)  # fmt: skip
        images, boxes = self.finish(images, boxes)
        height, width = images.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        return images.as_subclass(torch.Tensor), boxes.as_subclass(torch.Tensor).float() / scale

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """``finish`` on an image alone: the pixels :meth:`__call__` gives with a box
        (normalising does not depend on it)."""
        return self.finish(tv_tensors.Image(image)).as_subclass(torch.Tensor)


class LocalizationDataset(Dataset):
    """``(image, label, box)`` per sample; boxes are clipped to the image (within the
    tolerance the readers allow) before they move with it.

    Images are decoded and resized to ``size`` (boxes with them) in ``cache`` (the datamodule's
    :meth:`~cnnsuite.data.TaskDataModule.decoded_cache`): once, kept in memory, when the split
    fits in ``cache_limit_mb`` (see :mod:`cnnsuite.data.cache`), or read from the shards of a
    prepared folder, which hold each image with its box (``boxes``, the rows' boxes in the
    file's pixels, is then None: nothing is decoded here). A batch of them then goes through
    ``transform`` at once (``__getitems__``, PyTorch's batched fetch).
    """

    def __init__(
        self,
        root: Path,
        ids: list[str],
        labels: list[int],
        boxes: list[tuple[float, float, float, float]] | None,
        channels: int,
        size: int,
        transform: BoxTransform,
        cache,
    ) -> None:
        self.root, self.ids, self.labels, self.boxes = root, ids, labels, boxes
        self.channels, self.size, self.transform = channels, size, transform
        nbytes = len(ids) * channels * size * size * 4  # float32
        self.decoded = cache(self.decode, ids, nbytes, what=f"{root}: {len(ids)} images")

    def decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The image resized to ``size`` (float in [0, 1]) and its box clipped to it, in its pixels."""
        path = self.root / self.ids[index]
        width, height = image_size(path)
        image = read_image(path, self.channels, (self.size, self.size))
        x1, y1, x2, y2 = self.boxes[index]
        box = torch.tensor([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)], dtype=torch.float32)
        box = box * torch.tensor([self.size / width, self.size / height] * 2)
        return image, box

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        """The samples at ``indices``, transformed as one batch (PyTorch's batched fetch)."""
        decoded = [self.decoded[i] for i in indices]
        images, boxes = self.transform(torch.stack([image for image, _ in decoded]),
                                       torch.stack([box for _, box in decoded]))  # fmt: skip
        return list(zip(images, [self.labels[i] for i in indices], boxes, strict=True))


class LocalizationDataModule(ImageDataModule):
    """One-object images → train/val/test loaders of ``(image, label, box)``.

    ``cache_limit_mb``: a split whose resized images fit is decoded once and kept in memory
    (:mod:`cnnsuite.data.cache`); training's random moves run on whole batches, on the model's
    device (:meth:`augment_batch`).
    ``image_size``: every image is resized to this square (boxes with it).
    ``augment``: random shifts and zooms in training; ``hflip`` adds left-right flips (off
    by default: a mirrored digit is not a digit; birds do not mind).
    ``on_bad_file``: ``error`` (default) checks every row and every image header before
    training and stops listing all that fail; ``skip`` leaves them out with a warning.
    """

    default_name = "localization2d"
    streams_prepared = True
    after_decoding_hparams = ("batch_size", "augment", "hflip")

    def __init__(self, format: str = "auto", hflip: bool = False, image_size: int = 64, **kwargs) -> None:
        super().__init__(image_size=image_size, **kwargs)
        data_dir, channels = self.raw_data_dir, self.hparams.channels
        if format not in FORMATS:
            raise ConfigError(f"data.format={format!r}: expected one of {', '.join(FORMATS)}")
        self._samples: dict[str, Sample] | None = None
        self._lists: ListedSplits | None = None  # the split the data brings
        if data_dir is None:
            self.format = "csv"
            self.class_names = [str(d) for d in range(10)]
            self.in_channels = channels or 1
        else:
            root = check_folder(data_dir)
            self.format = detect_format(root) if format == "auto" else format
            self._load()  # reads and checks every row now: errors surface before anything else
            if not self._samples:
                raise ConfigError(f"data.data_dir={root}: no usable samples")
            self.in_channels = channels or image_channels(root / i for i in self._samples)
        self.use_prepared()

    @property
    def input_shape(self) -> tuple[int, ...]:
        size = self.hparams.image_size
        return (self.in_channels, size, size)

    def synthetic_batch(self, size: int, generator: torch.Generator | None = None):
        """``(x, labels, boxes)`` of random values, the boxes ``x1, y1, x2, y2`` as fractions of
        the image as the loader gives them (see :meth:`TaskDataModule.synthetic_batch`)."""
        x, labels = super().synthetic_batch(size, generator)
        corner = torch.rand(size, 2, generator=generator) * 0.5
        return x, labels, torch.cat([corner, corner + 0.2 + torch.rand(size, 2, generator=generator) * 0.3], dim=1)

    # --- reading ------------------------------------------------------------------------
    def _load(self) -> dict[str, Sample]:
        """Read (once) every row of the data; bad rows are reported all at once."""
        if self._samples is not None:
            return self._samples
        root, on_bad = self.root, self.hparams.on_bad_file
        try:
            fixed = {}
            if self.format == "csv":
                names, samples, errors = read_csv_labels(root)
            elif self.format == "cub":
                names, samples, errors, fixed = read_cub(root)
            else:
                names, samples, errors, self._lists = read_detection_folder(root, self.format, on_bad)
        except (OSError, AnnotationError) as err:
            raise ConfigError(f"data.data_dir={root}: {err}") from None
        if self.hparams.data_dir is None and names != self.class_names:
            raise ConfigError(f"{root}: the default's labels are {names}, expected {self.class_names}")
        self.class_names = names
        self._samples, total = {s.file: s for s in samples}, len(samples) + len(errors)
        if fixed:  # CUB's train/test split, of the images kept
            ids = {stage: sorted(i for i in self._samples if fixed.get(i) == stage) for stage in ("train", "test")}
            self._lists = ListedSplits(ids, dict.fromkeys(ids, root / "train_test_split.txt"))
        if errors and on_bad == "error":  # one error names everything to fix: the good rows' images too
            errors = errors + list(self.find_bad(list(self._samples), decode=False).values())
        report_bad_files(errors, total, on_bad, what="labelled images")
        return self._samples

    def find_bad(self, ids: list[str], decode: bool) -> dict[str, BadFileError]:
        """Unreadable images (headers only, or fully decoded) and boxes outside their image,
        each file opened once."""
        samples = self._load()

        def check(sample_id: str) -> None:
            sample = samples[sample_id]
            size = checked_size(self.root / sample_id, self.in_channels if decode else None)
            if sample.size is not None and (problem := size_error(size, sample.size)):  # its box is in another frame
                raise BadFileError(f"{sample.where}: the image {problem}")
            problem = box_error(sample.box, size, f"its image {sample_id}")
            if problem:
                raise BadFileError(f"{sample.where}: {problem}")

        return collect_bad(ids, check)

    # --- TaskDataModule hooks -------------------------------------------------------------
    def list_samples(self) -> list[tuple[str, int]]:
        return [(s.file, s.label) for s in self._load().values()]

    def decide_splits(self) -> dict[str, list[str]]:
        """The split the data brings when it brings one (val drawn from its train part): CUB's
        train/test split, VOC's ``ImageSets/Main`` lists (see
        :meth:`~cnnsuite.data.TaskDataModule.listed_splits`)."""
        self._load()
        if self.hparams.split_file or not self._lists:
            return super().decide_splits()
        return self.listed_splits(self._lists.ids, f"{self.root}'s split lists", self._lists.files)

    def make_dataset(self, ids: list[str], stage: str) -> Dataset:
        hp, label_of = self.hparams, dict(self.samples())
        boxes = None  # a prepared folder's shards hold each image with its box
        if self.prepared is None:
            ids = self.check_samples(ids, stage)
            boxes = [self._load()[i].box for i in ids]
        labels = [label_of[i] for i in ids]
        return LocalizationDataset(self.root, ids, labels, boxes, self.in_channels, hp.image_size, self.transform(),
                                   self.decoded_cache(stage))  # fmt: skip

    def transform(self) -> BoxTransform:
        """Every split's preprocessing after reading (which resizes to ``image_size`` and scales
        to [0, 1]): normalisation. Training's random moves come after it (:meth:`augment_batch`)."""
        finish = v2.Normalize(**self.input_normalisation)
        return BoxTransform(finish)

    def augment_batch(self, batch: list) -> list:
        """Training's random shifts (±10 %) and zooms (0.85–1.15), left-right flips with
        ``hflip``, one draw per sample and boxes moved with their image (:class:`BatchBoxAffine`),
        on the normalised images where the batch is: what comes in from outside the image is
        black, as when the [0, 1] pixels were moved."""
        if not self.hparams.augment:
            return batch
        images, labels, boxes = batch
        size = self.hparams.image_size  # boxes are fractions of the square input
        moves = BatchBoxAffine(0.1, (0.85, 1.15), self.hparams.hflip, fill=self.normalised_black)
        images, boxes = moves(images, boxes * size, self.augment_generator)
        return [images, labels, boxes / size]

    def describe_preprocessing(self) -> dict:
        return describe_image_preprocessing(self.in_channels, self.hparams.image_size, **self.input_normalisation)

    def read_input(self, path: Path) -> Input:
        """The image as the test split sees it; ``meta`` holds its size in pixels, in which the
        predicted box is given, and ``view``, on which it is drawn, a copy no larger than a
        picture (:func:`~cnnsuite.data.images.read_image_with_picture`)."""
        size = self.hparams.image_size
        image, picture, (width, height) = read_image_with_picture(path, self.in_channels, (size, size))
        return Input(path, self.transform().image(image), {"width": width, "height": height}, view=picture)

    # --- the embedded default ---------------------------------------------------------------
    def write_default(self, folder: Path) -> None:
        scans, digits = digit_scans()
        rng = np.random.default_rng(DEFAULT_SEED)
        (folder / "images").mkdir()
        rows, lists = [], {}
        for stage, indices in digit_split().items():
            lists[stage] = []
            for copy in range(DEFAULT_CANVASES_PER_SCAN[stage]):
                for scan in indices:
                    canvas, box = compose_canvas(rng, scans, scan, indices)
                    name = f"images/{stage}_{scan:04d}_{copy}.png"
                    Image.fromarray(canvas, mode="L").save(folder / name)
                    rows.append([name, str(digits[scan]), *box])
                    lists[stage].append(name)
        with (folder / "labels.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
        for stage in STAGES:
            (folder / f"{stage}.txt").write_text("".join(f"{name}\n" for name in lists[stage]))
