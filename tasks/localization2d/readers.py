"""localization2d's readers: a user's folder → class names, one :class:`Sample` per image
(its label and one box) and the errors of every bad row, all at once.

Formats (``format: auto`` tells them apart by their files):

- ``csv``: ``labels.csv`` with columns ``image,label,x1,y1,x2,y2`` (pixels of the upright
  image, image paths relative to the folder); optional ``train.txt``/``val.txt``/``test.txt``.
- ``cub``: CUB-200-2011 as downloaded: ``images.txt``, ``image_class_labels.txt``,
  ``bounding_boxes.txt`` (``<id> <x> <y> <width> <height>``), ``train_test_split.txt``,
  ``classes.txt`` and ``images/``. Its own train/test split is kept; val is drawn from train.
- ``coco`` (``annotations.json``) or ``voc`` (``Annotations/*.xml``), read by detection2d's
  readers in :mod:`cnnsuite.data.coco`; every image must hold exactly one box. VOC's own
  split lists (``ImageSets/Main/train.txt`` ...) are its split, as they are detection2d's.

Every error a user's files can cause — a box with ``x2 <= x1``, a row naming a missing image,
an image with two boxes — names the file and the row (or annotation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnnsuite.data import BadFileError
from cnnsuite.data.coco import box_error, read_coco, read_voc, voc_classes, voc_split_lists
from cnnsuite.data.folders import leaves_folder
from cnnsuite.data.splits import ListedSplits
from cnnsuite.data.textfiles import read_csv, read_lines
from cnnsuite.errors import ConfigError

CSV_COLUMNS = ("image", "label", "x1", "y1", "x2", "y2")
CUB_FILES = ("images.txt", "image_class_labels.txt", "bounding_boxes.txt", "classes.txt")
FORMATS = ("auto", "csv", "cub", "coco", "voc")


@dataclass(frozen=True)
class Sample:
    """One image's label and box (``x1, y1, x2, y2`` pixels); ``where`` names its row. ``size``
    (width, height) is the size a COCO or VOC annotation declares: its box is in those pixels."""

    file: str
    label: int
    box: tuple[float, float, float, float]
    where: str
    size: tuple[int, int] | None = None


def detect_format(root: Path) -> str:
    """The one layout of labels ``root`` holds (``data.format: auto``); a folder of two (a
    ``labels.csv`` beside a COCO file) is the user's to choose between: reading one of them
    unasked would name the other's images as missing, or train on the wrong labels."""
    found = {
        "csv": ("labels.csv", (root / "labels.csv").is_file()),
        "cub": ("the CUB-200-2011 files", all((root / name).is_file() for name in CUB_FILES)),
        "coco": ("annotations.json (COCO)", (root / "annotations.json").is_file()),
        "voc": ("an Annotations/ folder (Pascal VOC)", (root / "Annotations").is_dir()),
    }
    present = [layout for layout, (_, there) in found.items() if there]
    if len(present) > 1:
        raise ConfigError(
            f"data.data_dir={root}: holds {' and '.join(found[f][0] for f in present)}; name the one to read "
            f"with --data.format {' or '.join(present)}"
        )
    if not present:
        raise ConfigError(
            f"data.data_dir={root}: found neither labels.csv, the CUB-200-2011 files ({', '.join(CUB_FILES)}), "
            "annotations.json (COCO) nor an Annotations/ folder (Pascal VOC)"
        )
    return present[0]


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
    rows = read_csv(path, CSV_COLUMNS)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    class_names = sorted({row["label"] for row in rows if row["label"]})
    samples, errors = [], []
    for row in rows:
        where = f"{path} line {row.line}"
        try:
            box = tuple(float(row[c]) for c in ("x1", "y1", "x2", "y2"))
        except (TypeError, ValueError):
            errors.append(BadFileError(f"{where}: x1, y1, x2, y2 must be numbers, got {row}"))
            continue
        label, image = row["label"], row["image"]
        problem = box_error(box)
        if not label:
            problem = "empty label"
        elif leaves_folder(image):  # refused before anything there is looked at
            problem = f"image {image!r} lies outside the data folder; expected a path inside it"
        elif not (root / image).is_file():
            problem = f"image {image!r} does not exist"
        if problem:
            errors.append(BadFileError(f"{where}: {problem}"))
            continue
        samples.append(Sample(image, class_names.index(label), box, where))
    return class_names, one_per_image(samples, errors), errors


def _cub_table(path: Path, columns: int, numbered: bool = False) -> dict[str, list[str]]:
    """``<id> <value>...`` lines of a CUB file, by id; a malformed line (``numbered``: one
    whose id is no integer) is an error naming it."""
    table = {}
    for number, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns:
            raise ConfigError(f"{path} line {number}: expected {columns} fields, got {line!r}")
        if numbered and not parts[0].isdecimal():
            raise ConfigError(f"{path} line {number}: expected an integer id first, got {line!r}")
        table[parts[0]] = parts[1:]
    return table


def read_cub(root: Path) -> tuple[list[str], list[Sample], list[BadFileError], dict[str, str]]:
    """CUB-200-2011 → class names, samples, bad rows' errors and ``{image file: "train"|"test"}``."""
    classes = _cub_table(root / "classes.txt", 2, numbered=True)  # ordered by their ids
    class_ids = sorted(classes, key=int)
    class_names = [classes[c][0] for c in class_ids]
    images = _cub_table(root / "images.txt", 2)
    labels = _cub_table(root / "image_class_labels.txt", 2)
    split_path = root / "train_test_split.txt"
    is_train = _cub_table(split_path, 2) if split_path.is_file() else {}
    boxes_path = root / "bounding_boxes.txt"
    samples, errors, fixed = [], [], {}
    for number, line in enumerate(read_lines(boxes_path), start=1):
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
        elif leaves_folder(images[image_id][0]):  # refused before anything there is looked at
            problem = f"image {images[image_id][0]!r} lies outside the images folder; expected a path inside it"
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


def read_detection_folder(
    root: Path, fmt: str, on_bad_file: str
) -> tuple[list[str], list[Sample], list[BadFileError], ListedSplits | None]:
    """A COCO (``annotations.json``) or Pascal VOC folder whose images hold one box each: class
    names, samples, the bad ones' errors, and the split a VOC folder's ``ImageSets/Main`` lists
    make (:func:`~cnnsuite.data.coco.voc_split_lists`; None where they make none, and for COCO)."""
    if fmt == "coco":
        path = root / "annotations.json"
        data = read_coco(path, root, on_bad_file)
    else:
        path = root / "Annotations"
        data = read_voc(root, voc_classes(root), on_bad_file)
    samples, errors, kept = [], [], []
    for record in data.records:
        where = f"{record.source or path}: image {record.file}" + (f" (id {record.image_id})" if fmt == "coco" else "")
        if len(record.boxes) != 1:
            noun = "annotations" if fmt == "coco" else "objects"
            ids = f" ({noun} {record.annotation_ids})" if record.boxes else ""
            errors.append(BadFileError(f"{where}: {len(record.boxes)} boxes{ids} where one is expected"))
            continue
        samples.append(
            Sample(record.file, record.labels[0], tuple(record.boxes[0]), where, (record.width, record.height))
        )
        kept.append(record)
    # an image left out for its boxes stays out of the lists, as one whose XML was bad
    lists = voc_split_lists(root, kept) if fmt == "voc" else None
    return list(data.categories.names), samples, errors, lists
