"""Where detection2d's samples come from: images with many boxes, in COCO JSON (or VOC XML).

- **Your data** (``data_dir``): ``annotations.json`` in COCO format, images found by
  ``file_name`` relative to the folder or to its ``images/`` sub-folder; or fixed splits
  ``train.json`` with ``val.json`` and/or ``test.json`` (COCO files, same categories); or
  COCO as downloaded, ``annotations/instances_train2017.json`` and ``instances_val2017.json``
  with images in ``train2017/`` and ``val2017/``; or a Pascal VOC folder
  (``Annotations/*.xml`` + ``JPEGImages/``, its split in ``ImageSets/Main/train.txt`` ...).
  Category ids may have gaps (COCO's run 1…90): they map to contiguous labels and back
  (:class:`~cnnsuite.data.coco.CategoryMap`). Without fixed splits, images are split by
  ``seed``, stratified by each image's most frequent class; with train and val files (or
  lists) but no test file (COCO's test labels are not public), val is the test split and
  validation is drawn from train by ``seed``.
- **Embedded default**: canvases of real handwritten digits (scikit-learn's scans, upscaled
  to varied sizes, a few per canvas, sometimes overlapping a little), written once as PNGs
  with ``train.json``/``val.json``/``test.json`` under ``data/detection2d/`` and read back by
  the same COCO reader. Each split's canvases use only that split's scans of the digit
  tasks' shared split, so no test scan was seen in training by any digit task.

A sample is ``(image float (C, H, W) in [0, 1], target)`` with ``target`` as torchvision's
detectors want it: ``boxes`` (x1, y1, x2, y2 pixels), ``labels`` (0…K-1), ``iscrowd``,
``area`` (what COCO's size buckets go by) and ``image_id`` (the dataset's own id, for the
COCO results file). Batches are lists: images may differ in size; the detector resizes them
itself.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cnnsuite.data import (
    IMAGE_EXTENSIONS,
    BadFileError,
    Input,
    TaskDataModule,
    check_folder,
    collect_bad,
    image_channel_names,
    image_channels,
    image_size,
    read_image,
)
from cnnsuite.data.coco import (
    AnnotationError,
    CategoryMap,
    DetectionData,
    DetectionRecord,
    check_annotated_size,
    coco_document,
    coco_split_files,
    read_categories,
    read_coco,
    read_voc,
    voc_classes,
    voc_split_lists,
)
from cnnsuite.data.digits import digit_scans, digit_split
from cnnsuite.data.images import describe_read, read_image_with_picture
from cnnsuite.data.splits import ListedSplits
from cnnsuite.errors import ConfigError, StateError

from .default_data import (
    DEFAULT_CANVAS_SIZE,
    DEFAULT_CANVASES,
    DEFAULT_DIGIT_HEIGHT,
    DEFAULT_DIGITS_PER_CANVAS,
    DEFAULT_SEED,
    compose_canvas,
)


def load_image(path: Path, channels: int) -> torch.Tensor:
    """``(channels, H, W)`` float in [0, 1], the image's own size: all the preprocessing a
    sample gets here, for training, evaluation and prediction alike — the detector resizes
    and normalises inside itself (its ``transform``)."""
    return read_image(path, channels)


def collate(batch):
    """Lists, not stacked tensors: images may differ in size, targets in box count."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class DetectionDataset(Dataset):
    """``(image, target)`` of each of ``ids`` (image files, their annotations in ``records``),
    kept in ``cache`` (the datamodule's :meth:`~cnnsuite.data.TaskDataModule.decoded_cache`):
    decoded once and kept in memory when the split fits in ``cache_limit_mb`` (see
    :mod:`cnnsuite.data.cache`), else read from its file at every access; or read from the
    shards of a prepared folder, which hold each image with its target."""

    def __init__(self, root: Path, ids: list[str], records: dict[str, DetectionRecord], channels: int, cache) -> None:
        self.root, self.ids, self.records, self.channels = root, ids, records, channels
        # float32 images at their own sizes, which the annotations give (a prepared folder's need none)
        nbytes = 4 * channels * sum(records[i].width * records[i].height for i in ids) if records else 0
        self.items = cache(self.read, ids, nbytes, f"{root}: {len(ids)} images")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        item = self.items[index]
        return item["image"], item["target"]

    def read(self, index: int) -> dict:
        """The image and its target, decoded from the files."""
        record = self.records[self.ids[index]]
        image = load_image(self.root / record.file, self.channels)
        check_annotated_size(self.root, record, image.shape[2], image.shape[1])
        target = {
            "boxes": torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(record.labels, dtype=torch.int64),
            "iscrowd": torch.tensor(record.iscrowd, dtype=torch.int64),
            "area": torch.tensor(record.areas, dtype=torch.float32),  # COCO's size buckets go by it
            "image_id": record.image_id,
        }
        return {"image": image, "target": target}


class DetectionDataModule(TaskDataModule):
    """COCO (or VOC) folder → train/val/test loaders of ``(images, targets)`` lists.

    ``format``: ``auto`` (COCO if the folder holds ``annotations.json`` or split files, else
    VOC if it holds ``Annotations/``), ``coco`` or ``voc``.
    ``on_bad_annotation``: ``error`` (default) stops at a bad annotation, a missing image or
    one whose header does not read or gives another size than its annotation, naming them all
    together, each by its file (and annotation id); ``skip`` leaves each out with a warning naming it.
    ``cache_limit_mb``: a split whose decoded images fit is decoded once and kept in memory
    (:mod:`cnnsuite.data.cache`).
    """

    default_name = "detection2d"
    streams_prepared = True
    targetless_samples = True  # images without objects
    collate_fn = staticmethod(collate)
    input_extensions = IMAGE_EXTENSIONS
    sample_noun = "images"

    def __init__(
        self,
        format: str = "auto",
        channels: int | None = None,
        on_bad_annotation: str = "error",
        batch_size: int = 16,
        cache_limit_mb: float = 1024,
        **kwargs,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        data_dir = self.raw_data_dir
        if format not in ("auto", "coco", "voc"):
            raise ConfigError(f"data.format={format!r}: expected 'auto', 'coco' or 'voc'")
        if on_bad_annotation not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_annotation={on_bad_annotation!r}: expected 'error' or 'skip'")
        self._data: DetectionData | None = None
        self._lists: ListedSplits | None = None  # the split the data brings
        if data_dir is None:
            self.categories = CategoryMap(list(range(1, 11)), [str(d) for d in range(10)])
            self.in_channels = channels or 1
        else:
            root = check_folder(data_dir)
            self.format = self._detect_format(root)
            if self.format == "voc":
                names = voc_classes(root)
                self.categories = CategoryMap(list(range(len(names))), names)
            else:
                self.categories = self._coco_categories(root)
            self._load()  # reads and checks every annotation now: errors surface before training
            if not self._data.records:
                raise ConfigError(f"data.data_dir={root}: the annotations list no images")
            self.in_channels = channels or image_channels(root / r.file for r in self._data.records)
        self.class_names = list(self.categories.names)
        self.use_prepared()

    def preprocessing_state(self) -> dict:
        """With the data's category ids: a prepared folder's record keeps them, so a run on it
        writes results files in the data's own ids (COCO's run 1…90, with gaps)."""
        return {**super().preprocessing_state(), "category_ids": list(self.categories.ids)}

    def follow_classes(self, names: list[str]) -> None:
        """With the data's category ids for the names it has: the results file of its test
        detections is then in its ids; a class the data lacks takes an id past all of its own,
        which its annotations never name."""
        super().follow_classes(names)
        if self._class_index is None:
            return
        ids = dict(zip(self.categories.names, self.categories.ids, strict=True))
        first = max(self.categories.ids, default=0) + 1
        spare = iter(range(first, first + len(names)))
        self.categories = CategoryMap([ids[n] if n in ids else next(spare) for n in names], list(names))

    def restore_preprocessing(self, state: dict) -> None:
        if "category_ids" in state:  # a prepared folder's record (a checkpoint holds none)
            ids = state["category_ids"]
            if not (
                isinstance(ids, list) and len(ids) == len(self.class_names) and len(set(ids)) == len(ids)
                and all(type(i) is int for i in ids)
            ):  # fmt: skip
                # else a label past the list failed writing results, after the training
                raise StateError(
                    f"category_ids is {ids!r}, expected {len(self.class_names)} distinct whole numbers, one a class"
                )
            self.categories = CategoryMap(list(ids), self.class_names)

    @property
    def channel_names(self) -> list[str] | None:
        """``L`` for grey images, ``R``, ``G``, ``B`` for colour ones."""
        return image_channel_names(self.in_channels)

    # --- reading --------------------------------------------------------------------
    def _detect_format(self, root: Path) -> str:
        fmt = self.hparams.format
        if fmt != "auto":
            return fmt
        if (root / "annotations.json").is_file() or coco_split_files(root) is not None:
            return "coco"
        if (root / "Annotations").is_dir():
            return "voc"
        raise ConfigError(
            f"data.data_dir={root}: found neither annotations.json, train/val/test.json, "
            "annotations/instances_<split><year>.json (COCO) nor an Annotations/ folder (Pascal VOC)"
        )

    def _coco_categories(self, root: Path) -> CategoryMap:
        files = coco_split_files(root)
        if files is None:
            if not (root / "annotations.json").is_file():
                raise ConfigError(f"data.data_dir={root}: no annotations.json (COCO)")
            return read_categories(root / "annotations.json")
        maps = {s: read_categories(f.path) for s, f in files.items()}
        for s in maps:
            if (maps[s].ids, maps[s].names) != (maps["train"].ids, maps["train"].names):
                raise AnnotationError(f"{files[s].path}: its categories differ from those of {files['train'].path}")
        return maps["train"]

    def _load(self) -> DetectionData:
        """Read (once) every record of the data, and its fixed splits if it brings them."""
        if self._data is not None:
            return self._data
        root, on_error = self.root, self.hparams.on_bad_annotation
        if self.hparams.data_dir is not None and self.format == "voc":
            self._data = read_voc(root, self.categories.names, on_error)
            self._lists = voc_split_lists(root, self._data.records)
            return self._data
        files = coco_split_files(root)
        if files is None:
            self._data = read_coco(root / "annotations.json", root, on_error)
            return self._data
        records, ids_of = [], {}
        for stage, f in files.items():
            part = read_coco(f.path, root, on_error, f.image_folders)
            records += part.records
            ids_of[stage] = [r.file for r in part.records]
        self._lists = ListedSplits(ids_of, {stage: f.path for stage, f in files.items()})
        seen: dict[str, str] = {}
        for stage, ids in ids_of.items():
            for sample_id in ids:
                if sample_id in seen:
                    raise AnnotationError(
                        f"{files[stage].path}: image {sample_id} is also in {files[seen[sample_id]].path}"
                    )
                seen[sample_id] = stage
        # Image ids stay as each file has them: a results file for the test split matches
        # its file. Samples are keyed by file, which is unique across the split files.
        self._data = DetectionData(self.categories, records)
        return self._data

    # --- TaskDataModule hooks -------------------------------------------------------
    def list_samples(self) -> list[tuple[str, int]]:
        """``(image file, its most frequent label)``, -1 for an image without objects; the label
        only stratifies the split. Where the smaller of val and test could not hold every class,
        it is whether the image has objects (0) or not (-1), so each split still gets images with
        objects to score; where it could not hold those two either, the same for all."""
        samples = []
        for record in self._load().records:
            counts = Counter(record.labels)
            samples.append((record.file, counts.most_common(1)[0][0] if counts else -1))
        smallest = min(self.hparams.val_fraction, self.hparams.test_fraction) * len(samples)
        if smallest < len({label for _, label in samples}):
            kinds = {min(label, 0) for _, label in samples}
            return [(i, min(label, 0) if smallest >= len(kinds) else 0) for i, label in samples]
        return samples

    def decide_splits(self) -> dict[str, list[str]]:
        """The data's own split files (COCO's) or lists (VOC's) when it brings them: with train
        and val but no test (COCO as downloaded), val is the test split; validation is then drawn
        from train by ``seed``, as when a test file comes without a val file
        (:meth:`~cnnsuite.data.TaskDataModule.listed_splits`)."""
        self._load()
        lists = self._lists
        if self.hparams.split_file or lists is None:
            return self.with_objects(super().decide_splits())
        return self.with_objects(self.listed_splits(lists.ids, f"{self.root}'s split files", lists.files))

    def with_objects(self, splits: dict[str, list[str]]) -> dict[str, list[str]]:
        """``splits``, once its validation and test images hold an object each at least: mAP
        scores detections against objects, so a split of background images alone scores nothing
        (the run would stop after its first epoch, finding no ``val/map`` to pick checkpoints by).
        A crowd (or VOC ``difficult``) box is no object to score: it only excuses detections."""
        boxed = {record.file for record in self._load().records if not all(record.iscrowd)}
        for stage in ("val", "test"):
            if splits[stage] and not boxed.intersection(splits[stage]):
                raise ConfigError(
                    f"{self.root}: the {stage} split's {len(splits[stage])} images hold no object, so mAP has "
                    f"nothing to score ({len(boxed)} of {len(self._load().records)} images have objects); give a "
                    "split that has some (data.split_file), or raise data.val_fraction / data.test_fraction"
                )
        return splits

    @property
    def on_bad_file(self) -> str:
        """Images that cannot be used are skipped with the bad annotations (``on_bad_annotation``)."""
        return self.hparams.on_bad_annotation

    def find_bad(self, ids: list[str], decode: bool) -> dict[str, BadFileError]:
        """``{id: error}`` of the images of ``ids`` whose header does not read or gives another
        size than their annotation. Headers only, whether stopping or skipping (``decode``): an
        image damaged past its header is named when it is decoded."""
        records = {r.file: r for r in self._load().records}
        return collect_bad(ids, lambda i: check_annotated_size(self.root, records[i], *image_size(self.root / i)))

    def make_dataset(self, ids: list[str], stage: str) -> Dataset:
        # a prepared folder's shards hold each image with its target: no annotation is read
        records = {}
        if self.prepared is None:
            ids = self.check_samples(ids, stage)
            records = {r.file: replace(r, labels=[self.relabel(i) for i in r.labels]) for r in self._load().records}
        return DetectionDataset(self.root, ids, records, self.in_channels, self.decoded_cache(stage))

    def describe_preprocessing(self) -> dict:
        return {
            "read": describe_read(self.in_channels) + ", at its own size",
            "scale": "to [0, 1]: 8-bit values / 255, 16-bit / 65535",
            "layout": "channels first: (C, H, W); resizing and normalisation happen when images are batched",
        }

    def read_input(self, path: Path) -> Input:
        """The image as the test split reads it; boxes are predicted in its pixels. ``view``,
        which its picture is drawn from, is a copy no larger than a picture
        (:func:`~cnnsuite.data.images.read_image_with_picture`)."""
        image, picture, (width, height) = read_image_with_picture(path, self.in_channels)
        return Input(path, image, {"width": width, "height": height}, view=picture)

    def synthetic_batch(self, size: int, generator: torch.Generator | None = None):
        """``(images, targets)`` lists as the loader gives them: canvases of random values the
        size of the embedded default's, each with as many boxes as it puts on a canvas, of its
        digits' sizes, at random places with random classes (see
        :meth:`TaskDataModule.synthetic_batch`)."""
        side, (fewest, most), (low, high) = DEFAULT_CANVAS_SIZE, DEFAULT_DIGITS_PER_CANVAS, DEFAULT_DIGIT_HEIGHT
        images = list(torch.rand(size, self.in_channels, side, side, generator=generator))
        targets = []
        for _ in range(size):
            count = int(torch.randint(fewest, most + 1, (), generator=generator))
            corner = torch.rand(count, 2, generator=generator) * (side - high)
            extent = low + torch.rand(count, 2, generator=generator) * (high - low)
            targets.append({"boxes": torch.cat([corner, corner + extent], dim=1),
                            "labels": torch.randint(self.num_classes, (count,), generator=generator),
                            "iscrowd": torch.zeros(count, dtype=torch.int64)})  # fmt: skip
        return images, targets

    # --- the embedded default -------------------------------------------------------
    def write_default(self, folder: Path) -> None:
        scans, digits = digit_scans()
        split = digit_split()
        rng = np.random.default_rng(DEFAULT_SEED)
        (folder / "images").mkdir()
        image_id = annotation_id = 1
        for stage, count in DEFAULT_CANVASES.items():
            records = []
            for index in range(count):
                canvas, boxes, labels = compose_canvas(rng, scans, digits, split[stage])
                name = f"{stage}_{index:05d}.png"
                Image.fromarray(canvas, mode="L").save(folder / "images" / name)
                n = len(boxes)
                records.append(
                    DetectionRecord(
                        name, image_id, canvas.shape[1], canvas.shape[0], boxes, labels, [0] * n,
                        list(range(annotation_id, annotation_id + n)),
                        [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes],
                    )
                )  # fmt: skip
                image_id, annotation_id = image_id + 1, annotation_id + n
            (folder / f"{stage}.json").write_text(json.dumps(coco_document(records, self.categories)))
