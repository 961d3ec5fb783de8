"""Where localization2d's samples come from: images with exactly one labelled box each.

Formats of ``data_dir`` (``format: auto`` tells them apart by their files):

- ``csv``: ``labels.csv`` with columns ``image,label,x1,y1,x2,y2`` (pixels of the upright
  image, image paths relative to the folder); optional ``train.txt``/``val.txt``/``test.txt``.
- ``cub``: CUB-200-2011 as downloaded: ``images.txt``, ``image_class_labels.txt``,
  ``bounding_boxes.txt`` (``<id> <x> <y> <width> <height>``), ``train_test_split.txt``,
  ``classes.txt`` and ``images/``. Its own train/test split is kept; val is drawn from train.
- ``coco`` (``annotations.json``) or ``voc`` (``Annotations/*.xml``), read by detection2d's
  readers in :mod:`cnnsuite.data.coco`; every image must hold exactly one box.

Every error a user's files can cause — a box with ``x2 <= x1``, a box outside its image, a
row naming a missing image, a corrupt image, an image with two boxes — names the file and
the row (or annotation) and is listed with all the others at once; ``on_bad_file: skip``
leaves those samples out with one warning naming each.

Boxes travel with their image through ``torchvision.transforms.v2`` as
``tv_tensors.BoundingBoxes``, so resizing, crops and flips move them with the pixels. An
augmentation that would push the box out of the image is drawn again (and after a few
tries the sample is only resized): a sample is never dropped or left with a wrong box.

The embedded default: one real handwritten digit (scikit-learn's scans, from the digit
tasks' shared split) at a random place and scale on a 64×64 canvas cluttered with fragments
of other digits (too small or cut to be one), bright strokes and noise, so the brightest
blob is not the answer. Written once as PNGs plus ``labels.csv`` and the split lists under
``data/localization2d/`` and read back by the CSV reader a user's folder goes through.

A sample is ``(image float (C, S, S), label, box (4,))`` with the box as ``x1, y1, x2, y2``
in fractions of the model input's width and height (IoU is the same in any such scale).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from cnnsuite.data import (
    BadFileError,
    ImageDataModule,
    Input,
    check_folder,
    describe_image_preprocessing,
    find_bad_images,
    image_channels,
    image_size,
    read_image,
    report_bad_files,
    symmetric_normalisation,
)
from cnnsuite.data.augment import BatchBoxAffine
from cnnsuite.data.cache import DecodedCache
from cnnsuite.data.coco import BORDER_TOLERANCE, AnnotationError, read_coco, read_voc, voc_classes
from cnnsuite.data.digits import digit_scans, digit_split
from cnnsuite.data.splits import STAGES, split_off
from cnnsuite.errors import ConfigError

CSV_COLUMNS = ("image", "label", "x1", "y1", "x2", "y2")
CUB_FILES = ("images.txt", "image_class_labels.txt", "bounding_boxes.txt", "classes.txt")
FORMATS = ("auto", "csv", "cub", "coco", "voc")

# The embedded default (changing them needs a fresh --data.data_root: it is written once).
DEFAULT_CANVAS_SIZE = 64
DEFAULT_DIGIT_HEIGHT = (16, 44)
DEFAULT_CANVASES_PER_SCAN = {"train": 3, "val": 1, "test": 1}
DEFAULT_SEED = 20260110


@dataclass(frozen=True)
class Sample:
    """One image's label and box (``x1, y1, x2, y2`` pixels); ``where`` names its row."""

    file: str
    label: int
    box: tuple[float, float, float, float]
    where: str


# --- readers --------------------------------------------------------------------------


def detect_format(root: Path) -> str:
    if (root / "labels.csv").is_file():
        return "csv"
    if all((root / name).is_file() for name in CUB_FILES):
        return "cub"
    if (root / "annotations.json").is_file():
        return "coco"
    if (root / "Annotations").is_dir():
        return "voc"
    raise ConfigError(
        f"data.data_dir={root}: found neither labels.csv, the CUB-200-2011 files ({', '.join(CUB_FILES)}), "
        "annotations.json (COCO) nor an Annotations/ folder (Pascal VOC)"
    )


def box_error(box: tuple[float, ...]) -> str | None:
    """Why ``box`` (x1, y1, x2, y2) is not a box, or None."""
    if not all(math.isfinite(v) for v in box):
        return f"box {box} has a coordinate that is not a finite number"
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has x2 <= x1 or y2 <= y1"
    return None


def one_per_image(samples: list[Sample], errors: list[BadFileError]) -> list[Sample]:
    """``samples`` less every image named more than once (each such image becomes one error
    naming all its rows): this task predicts one box per image."""
    rows: dict[str, list[Sample]] = {}
    for sample in samples:
        rows.setdefault(sample.file, []).append(sample)
    for file, group in rows.items():
        if len(group) > 1:
            errors.append(
                BadFileError(f"{file}: {len(group)} boxes ({', '.join(s.where for s in group)}) where one is expected")
            )
    return [group[0] for group in rows.values() if len(group) == 1]


def read_csv_labels(root: Path) -> tuple[list[str], list[Sample], list[BadFileError]]:
    """``labels.csv`` → class names (sorted labels), samples, and the bad rows' errors."""
    path = root / "labels.csv"
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path}: missing columns {missing}; expected {','.join(CSV_COLUMNS)}")
        rows = list(reader)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    class_names = sorted({row["label"].strip() for row in rows if row["label"] and row["label"].strip()})
    samples, errors = [], []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"{path} row {number}"
        try:
            box = tuple(float(row[c]) for c in ("x1", "y1", "x2", "y2"))
        except (TypeError, ValueError):
            errors.append(BadFileError(f"{where}: x1, y1, x2, y2 must be numbers, got {row}"))
            continue
        label, image = (row["label"] or "").strip(), (row["image"] or "").strip()
        problem = box_error(box)
        if not label:
            problem = "empty label"
        elif not (root / image).is_file():
            problem = f"image {image!r} does not exist"
        if problem:
            errors.append(BadFileError(f"{where}: {problem}"))
            continue
        samples.append(Sample(image, class_names.index(label), box, where))
    return class_names, one_per_image(samples, errors), errors


def _cub_table(path: Path, columns: int) -> dict[str, list[str]]:
    """``<id> <value>...`` lines of a CUB file, by id; a malformed line is an error naming it."""
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns:
            raise ConfigError(f"{path} line {number}: expected {columns} fields, got {line!r}")
        table[parts[0]] = parts[1:]
    return table


def read_cub(root: Path) -> tuple[list[str], list[Sample], list[BadFileError], dict[str, str]]:
    """CUB-200-2011 → class names, samples, bad rows' errors and ``{image file: "train"|"test"}``."""
    classes = _cub_table(root / "classes.txt", 2)
    class_ids = sorted(classes, key=int)
    class_names = [classes[c][0] for c in class_ids]
    images = _cub_table(root / "images.txt", 2)
    labels = _cub_table(root / "image_class_labels.txt", 2)
    split_path = root / "train_test_split.txt"
    is_train = _cub_table(split_path, 2) if split_path.is_file() else {}
    boxes_path = root / "bounding_boxes.txt"
    samples, errors, fixed = [], [], {}
    for number, line in enumerate(boxes_path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{boxes_path} line {number} (image id {parts[0]})"
        try:
            x, y, w, h = (float(v) for v in parts[1:])
        except ValueError:
            errors.append(BadFileError(f"{where}: expected <id> <x> <y> <width> <height>, got {line!r}"))
            continue
        image_id = parts[0]
        problem = box_error((x, y, x + w, y + h))
        if image_id not in images:
            problem = "no such id in images.txt"
        elif labels.get(image_id, [None])[0] not in classes:
            problem = "its class in image_class_labels.txt is missing or not in classes.txt"
        elif not (root / "images" / images[image_id][0]).is_file():
            problem = f"image images/{images[image_id][0]} does not exist"
        if problem:
            errors.append(BadFileError(f"{where}: {problem}"))
            continue
        file = f"images/{images[image_id][0]}"
        samples.append(Sample(file, class_ids.index(labels[image_id][0]), (x, y, x + w, y + h), where))
        if image_id in is_train:
            fixed[file] = "train" if is_train[image_id][0] == "1" else "test"
    return class_names, one_per_image(samples, errors), errors, fixed


def read_detection_folder(root: Path, fmt: str, on_bad_file: str) -> tuple[list[str], list[Sample], list[BadFileError]]:
    """A COCO (``annotations.json``) or Pascal VOC folder whose images hold one box each."""
    if fmt == "coco":
        path = root / "annotations.json"
        data = read_coco(path, root, on_bad_file)
    else:
        path = root / "Annotations"
        data = read_voc(root, voc_classes(root), on_bad_file)
    samples, errors = [], []
    for record in data.records:
        where = f"{path}: image {record.file} (id {record.image_id})"
        if len(record.boxes) != 1:
            ids = f" (annotations {record.annotation_ids})" if record.boxes else ""
            errors.append(BadFileError(f"{where}: {len(record.boxes)} boxes{ids} where one is expected"))
            continue
        samples.append(Sample(record.file, record.labels[0], tuple(record.boxes[0]), where))
    return list(data.categories.names), samples, errors


# --- samples with their box -----------------------------------------------------------


class BoxTransform:
    """``finish`` (resize, dtype, normalisation: a ``transforms.v2`` pipeline) applied to an image
    and its box together; the box comes out in fractions of the result. Random moves come
    before it, on whole batches (:class:`cnnsuite.data.augment.BatchBoxAffine`). :meth:`image`
    runs ``finish`` on an image without a box (prediction on a raw file)."""

    def __init__(self, finish: v2.Transform) -> None:
        self.finish = finish

    def __call__(self, image: torch.Tensor, box: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        image = tv_tensors.Image(image)
        boxes = tv_tensors.BoundingBoxes([box], format="XYXY", canvas_size=tuple(image.shape[-2:]), dtype=torch.float32)
        image, boxes = self.finish(image, boxes)
        height, width = image.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        return image.as_subclass(torch.Tensor), boxes.as_subclass(torch.Tensor)[0].float() / scale

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """``finish`` on an image alone: the pixels :meth:`__call__` gives with a box (resizing
        and normalising do not depend on it)."""
        return self.finish(tv_tensors.Image(image)).as_subclass(torch.Tensor)


class LocalizationDataset(Dataset):
    """``(image, label, box)`` per sample; boxes are clipped to the image (within the
    tolerance the readers allow) before they move with it.

    Images are decoded and resized to ``size`` (boxes with them) once, into uint8 images kept
    in memory, when the split fits in ``cache_limit_mb`` (see :mod:`cnnsuite.data.cache`).
    ``augment`` (training) then moves a whole batch at once (``__getitems__``, PyTorch's batched
    fetch); otherwise each sample goes through ``transform`` alone.
    """

    def __init__(
        self,
        root: Path,
        samples: list[Sample],
        channels: int,
        size: int,
        transform: BoxTransform,
        augment: BatchBoxAffine | None = None,
        cache_limit_mb: float = 0,
    ) -> None:
        self.root, self.samples, self.channels, self.size = root, samples, channels, size
        self.transform, self.augment = transform, augment
        self.resize = v2.Resize((size, size), antialias=True)
        nbytes = len(samples) * channels * size * size
        self.decoded = DecodedCache(self.decode, len(samples), nbytes, cache_limit_mb,
                                    what=f"{root}: {len(samples)} images")  # fmt: skip

    def decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The image resized to ``size`` (uint8) and its box clipped to it, in its pixels."""
        sample = self.samples[index]
        image = read_image(self.root / sample.file, self.channels)
        height, width = image.shape[-2:]
        x1, y1, x2, y2 = sample.box
        box = torch.tensor([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)], dtype=torch.float32)
        box = box * torch.tensor([self.size / width, self.size / height] * 2)
        return self.resize(image), box

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        labels = [self.samples[i].label for i in indices]
        decoded = [self.decoded[i] for i in indices]
        if self.augment is None:
            items = [self.transform(image, tuple(box.tolist())) for image, box in decoded]
            return [(image, label, box) for (image, box), label in zip(items, labels, strict=True)]
        images = v2.functional.to_dtype(torch.stack([image for image, _ in decoded]), torch.float32, scale=True)
        images, boxes = self.augment(images, torch.stack([box for _, box in decoded]))
        images = self.transform.finish(images)  # normalisation only: the size is the input's, the dtype float
        return list(zip(images, labels, boxes / self.size, strict=True))


class LocalizationDataModule(ImageDataModule):
    """One-object images → train/val/test loaders of ``(image, label, box)``.

    ``cache_limit_mb``: a split whose resized images fit is decoded once and kept in memory
    (:mod:`cnnsuite.data.cache`); training's random moves run on whole batches.
    ``image_size``: every image is resized to this square (boxes with it).
    ``augment``: random shifts and zooms in training; ``hflip`` adds left-right flips (off
    by default: a mirrored digit is not a digit; birds do not mind).
    ``on_bad_file``: ``error`` (default) checks every row and every image header before
    training and stops listing all that fail; ``skip`` leaves them out with a warning.
    """

    default_name = "localization2d"

    def __init__(self, format: str = "auto", hflip: bool = False, image_size: int = 64, **kwargs) -> None:
        super().__init__(image_size=image_size, **kwargs)
        data_dir, channels = self.hparams.data_dir, self.hparams.channels
        if format not in FORMATS:
            raise ConfigError(f"data.format={format!r}: expected one of {', '.join(FORMATS)}")
        self._samples: dict[str, Sample] | None = None
        self._fixed: dict[str, str] = {}
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
            self.in_channels = channels or image_channels(root / next(iter(self._samples)))

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
            if self.format == "csv":
                names, samples, errors = read_csv_labels(root)
            elif self.format == "cub":
                names, samples, errors, self._fixed = read_cub(root)
            else:
                names, samples, errors = read_detection_folder(root, self.format, on_bad)
        except (OSError, AnnotationError) as err:
            raise ConfigError(f"data.data_dir={root}: {err}") from None
        if self.hparams.data_dir is None and names != self.class_names:
            raise ConfigError(f"{root}: the default's labels are {names}, expected {self.class_names}")
        self.class_names = names
        report_bad_files(errors, len(samples) + len(errors), on_bad, what="labelled images")
        self._samples = {s.file: s for s in samples}
        return self._samples

    def _bad_samples(self, ids: list[str], decode: bool) -> dict[str, BadFileError]:
        """Unreadable images (headers only, or fully decoded) and boxes outside their image."""
        samples = self._load()
        bad = find_bad_images(self.root, ids, decode_channels=self.in_channels if decode else None)
        t = BORDER_TOLERANCE
        for sample_id in ids:
            if sample_id in bad:
                continue
            width, height = image_size(self.root / sample_id)
            x1, y1, x2, y2 = samples[sample_id].box
            if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
                bad[sample_id] = BadFileError(
                    f"{samples[sample_id].where}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside "
                    f"its image {sample_id} of {width}x{height} pixels"
                )
        return bad

    # --- TaskDataModule hooks -------------------------------------------------------------
    def list_samples(self) -> list[tuple[str, int]]:
        return [(s.file, s.label) for s in self._load().values()]

    def _decide_splits(self) -> dict[str, list[str]]:
        """CUB's own train/test split when it has one (val drawn from its train part)."""
        self._load()
        if self.hparams.split_file or not self._fixed:
            return super()._decide_splits()
        samples = self._samples
        train = [i for i in samples if self._fixed.get(i) == "train"]
        test = [i for i in samples if self._fixed.get(i) == "test"]
        fraction = min(0.5, self.hparams.val_fraction * len(samples) / max(len(train), 1))
        train, val, _ = split_off(train, [samples[i].label for i in train], fraction, self.hparams.seed)
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}

    def check_samples(self, ids: list[str]) -> None:
        if self.hparams.on_bad_file == "error":  # "skip" decodes each split when it is built
            report_bad_files(list(self._bad_samples(ids, decode=False).values()), len(ids), what="images")

    def make_dataset(self, ids: list[str], stage: str) -> Dataset:
        on_bad = self.hparams.on_bad_file
        bad = self._bad_samples(ids, decode=on_bad == "skip")
        report_bad_files(list(bad.values()), len(ids), on_bad, what=f"{stage} images")
        samples = self._load()
        hp = self.hparams
        augment = BatchBoxAffine(0.1, (0.85, 1.15), hp.hflip) if stage == "train" and hp.augment else None
        return LocalizationDataset(self.root, [samples[i] for i in ids if i not in bad], self.in_channels,
                                   hp.image_size, self.transform(), augment, hp.cache_limit_mb)  # fmt: skip

    def transform(self) -> BoxTransform:
        """Every split's preprocessing: resize, scale to [0, 1], normalise (training's random
        moves, :class:`BatchBoxAffine`, come before it, on whole batches)."""
        size = self.hparams.image_size
        finish = v2.Compose(
            [
                v2.Resize((size, size), antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(*symmetric_normalisation(self.in_channels)),
            ]
        )
        return BoxTransform(finish)

    def describe_preprocessing(self) -> dict:
        return describe_image_preprocessing(
            self.in_channels, self.hparams.image_size, *symmetric_normalisation(self.in_channels)
        )

    def read_input(self, path: Path) -> Input:
        """The image as the test split sees it; ``meta`` holds its size in pixels, in which the
        predicted box is given, and ``view`` the image as read, on which it is drawn."""
        image = read_image(path, self.in_channels)
        height, width = image.shape[-2:]
        return Input(path, self.transform().image(image), {"width": width, "height": height}, view=image)

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


def compose_canvas(
    rng: np.random.Generator, scans: np.ndarray, scan: int, pool: list[int], size: int = DEFAULT_CANVAS_SIZE
) -> tuple[np.ndarray, list[float]]:
    """A ``size``² canvas holding scan ``scan`` as its one digit; returns ``(uint8 image,
    box x1y1x2y2)``. The box is the tight box of the digit's ink (pixels above a quarter of
    its peak) after upscaling.

    Clutter, drawn from the same split's scans (``pool``) so no test scan reaches a
    training canvas: 2–4 fragments (a corner of another scan, at most 5×5 of its 8×8 cells),
    1–2 strokes and noise. The digit's brightness varies (55–100 %) while the strokes are at
    full brightness: the brightest blob is not the answer. Layers are combined by maximum.
    """
    canvas = np.clip(rng.normal(18, 8, (size, size)), 0, 255).astype(np.float32)
    h = int(rng.integers(DEFAULT_DIGIT_HEIGHT[0], DEFAULT_DIGIT_HEIGHT[1] + 1))
    w = max(8, int(round(h * rng.uniform(0.7, 1.0))))
    cell = h / 8
    for _ in range(rng.integers(2, 5)):
        other = scans[int(pool[rng.integers(len(pool))])]
        rows, cols = rng.integers(2, 6, size=2)
        top, left = rng.integers(0, 9 - rows), rng.integers(0, 9 - cols)
        piece = other[top : top + rows, left : left + cols]
        ph, pw = max(2, int(rows * cell)), max(2, int(cols * cell * w / h))
        patch = np.asarray(Image.fromarray(piece).resize((pw, ph), Image.Resampling.BILINEAR), np.float32)
        y0, x0 = rng.integers(0, size - ph + 1), rng.integers(0, size - pw + 1)
        np.maximum(canvas[y0 : y0 + ph, x0 : x0 + pw], patch, out=canvas[y0 : y0 + ph, x0 : x0 + pw])
    strokes = Image.new("L", (size, size))
    draw = ImageDraw.Draw(strokes)
    for _ in range(rng.integers(1, 3)):
        x, y = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(6, 18)
        end = (x + length * np.cos(angle), y + length * np.sin(angle))
        draw.line([(x, y), end], fill=int(rng.integers(200, 256)), width=int(rng.integers(1, 4)))
    np.maximum(canvas, np.asarray(strokes, np.float32), out=canvas)

    patch = np.asarray(Image.fromarray(scans[scan]).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    patch *= rng.uniform(0.55, 1.0)
    ys, xs = np.nonzero(patch > 0.25 * patch.max())
    x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    np.maximum(canvas[y0 : y0 + h, x0 : x0 + w], patch, out=canvas[y0 : y0 + h, x0 : x0 + w])
    box = [float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1)]
    return np.clip(canvas, 0, 255).astype(np.uint8), box


# --- the README's baselines ---------------------------------------------------------------


def baseline_scores(datamodule: LocalizationDataModule) -> dict[str, dict[str, float]]:
    """What two trivial predictors score on the test split: ``centre`` (the training boxes'
    mean size in the centre of the image, majority class) and ``brightest`` (the box of the
    brightest smoothed region, majority class). The CNN's figures mean something only well
    above these."""
    datamodule.prepare_data()
    datamodule.setup("test")
    samples = datamodule._load()
    train = [samples[i] for i in datamodule.splits["train"]]
    test = [samples[i] for i in datamodule.splits["test"]]
    majority = int(np.bincount([s.label for s in train]).argmax())
    sizes = []
    for s in train:
        width, height = image_size(datamodule.root / s.file)
        sizes.append(((s.box[2] - s.box[0]) / width, (s.box[3] - s.box[1]) / height))
    mean_w, mean_h = np.mean(sizes, axis=0)
    scores = {}
    for name in ("centre", "brightest"):
        ious, right = [], []
        for s in test:
            image = read_image(datamodule.root / s.file, 1)[0].numpy().astype(np.float32)
            height, width = image.shape
            if name == "centre":
                box = [width * (0.5 - mean_w / 2), height * (0.5 - mean_h / 2),
                       width * (0.5 + mean_w / 2), height * (0.5 + mean_h / 2)]  # fmt: skip
            else:
                box = brightest_region_box(image)
            ious.append(float(box_iou(torch.tensor([box]), torch.tensor([s.box]))[0, 0]))
            right.append(s.label == majority)
        ious, right = np.array(ious), np.array(right)
        scores[name] = {
            "acc": float(right.mean()),
            "miou": float(ious.mean()),
            "loc_acc": float(((ious >= 0.5) & right).mean()),
            "gt_known_loc": float((ious >= 0.5).mean()),
        }
    return scores


def brightest_region_box(image: np.ndarray, sigma: float = 2.0) -> list[float]:
    """The bounding box of the connected region, above half the peak of the smoothed image,
    that holds the brightest smoothed pixel."""
    smooth = ndimage.gaussian_filter(image, sigma)
    regions, _ = ndimage.label(smooth > 0.5 * smooth.max())
    peak = np.unravel_index(int(smooth.argmax()), smooth.shape)
    ys, xs = np.nonzero(regions == regions[peak])
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
