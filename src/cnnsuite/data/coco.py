"""Object-detection annotations: the COCO format (and Pascal VOC XML), read and checked.

A COCO file is a JSON object with ``images`` (``id``, ``file_name``, ``width``, ``height``),
``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` as ``[x, y, width, height]``
in pixels; ``iscrowd`` (0 or 1), ``segmentation`` and ``area`` are tolerated) and ``categories``
(``id``, ``name``). Category ids may be any integers, as in COCO itself (1…90 with gaps):
:class:`CategoryMap` turns them into the contiguous labels ``0…K-1`` a network predicts and
back. Image files are found by ``file_name`` relative to the dataset folder or to its
``images/`` sub-folder; in COCO's own download layout, relative to the split's folder
(``train2017/``), which :func:`coco_split_files` names.

Everything a user can get wrong — invalid JSON, a box outside its image, a zero-area box,
an unknown category or image id, a missing image file — raises :class:`AnnotationError`
naming the file and the annotation (or image) id; the bad annotations of a file are all
listed in one error. With ``on_error="skip"`` the bad
annotation (or the image whose file is missing) is left out instead, one warning naming them all.

A Pascal VOC folder (``Annotations/*.xml`` + ``JPEGImages/``) is read into the same records
by :func:`read_voc`.
"""

from __future__ import annotations

import json
import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .errors import BadFileError
from .folders import leaves_folder
from .images import image_size
from .splits import STAGES, ListedSplits
from .textfiles import ENCODING, parse_json, read_lines

#: tolerance, in pixels, for a box edge beyond the image border (rounding in exporters)
BORDER_TOLERANCE = 1.0


def box_error(
    box: tuple[float, float, float, float], size: tuple[int, int] | None = None, image: str = "its image"
) -> str | None:
    """Why ``box`` (``x1, y1, x2, y2`` in pixels) cannot be trained on, or None: a coordinate
    that is not a finite number (``float()`` reads ``nan``), no area, or, given the ``size``
    (width, height) of ``image``, an edge beyond it by more than :data:`BORDER_TOLERANCE`, or no
    area inside it (:func:`clipped` would leave none: a detector's loss refuses such a box).
    Every reader of boxes asks here, so that every format is held to the same rules."""
    if not all(math.isfinite(v) for v in box):
        return f"box {tuple(box)} has a coordinate that is not a finite number"
    x1, y1, x2, y2 = box
    corners = f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    if x2 <= x1 or y2 <= y1:
        return f"{corners} has zero or negative area (x2 <= x1 or y2 <= y1)"
    t = BORDER_TOLERANCE
    if size is not None and (x1 < -t or y1 < -t or x2 > size[0] + t or y2 > size[1] + t):
        return f"{corners} lies outside {image} of {size[0]}x{size[1]} pixels"
    if size is not None and (x1 >= size[0] or y1 >= size[1] or x2 <= 0 or y2 <= 0):  # within the tolerance
        return f"{corners} lies outside {image} of {size[0]}x{size[1]} pixels: no part of it is inside"
    return None


def clipped(box: tuple[float, float, float, float], size: tuple[int, int]) -> list[float]:
    """``box`` with its edges moved inside its image of ``size`` (width, height): what
    :func:`box_error` lets lie beyond the border."""
    x1, y1, x2, y2 = box
    return [max(x1, 0.0), max(y1, 0.0), min(x2, size[0]), min(y2, size[1])]


class AnnotationError(BadFileError):
    """A detection annotation that cannot be used; the message names the file and id."""


@dataclass
class CategoryMap:
    """Dataset category ids (distinct integers; a dataset's own sorted) ↔ contiguous labels ``0…K-1``."""

    ids: list[int]
    names: list[str]

    def __post_init__(self) -> None:
        self._label = {cid: label for label, cid in enumerate(self.ids)}

    def label(self, category_id: int) -> int:
        return self._label[category_id]

    def category_id(self, label: int) -> int:
        return self.ids[label]

    def __contains__(self, category_id: object) -> bool:
        return category_id in self._label

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class DetectionRecord:
    """One image and its boxes (``x1, y1, x2, y2`` in pixels) with contiguous labels."""

    file: str  # path relative to the dataset folder; also the sample id in split lists
    image_id: int
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    iscrowd: list[int] = field(default_factory=list)
    annotation_ids: list[int] = field(default_factory=list)
    #: each object's area in pixels², which puts it in COCO's small/medium/large bucket: the
    #: annotation's ``area`` (a polygon's, in real exports) where the file gives one, else the box's
    areas: list[float] = field(default_factory=list)
    #: the file that describes the image's objects: the COCO file, or the image's VOC XML
    source: str = ""


@dataclass
class DetectionData:
    categories: CategoryMap
    records: list[DetectionRecord]


class _Problems:
    """Every problem of one annotation source, said together at the end (a user fixing an
    export wants the whole list, not one per run): with ``on_error="error"`` raised, with
    ``"skip"`` left out with one warning listing them."""

    def __init__(self, source: Path, on_error: str) -> None:
        if on_error not in ("error", "skip"):
            raise ConfigError(f"on_error={on_error!r}: expected 'error' or 'skip'")
        self.source, self.on_error, self.found, self.fatal = source, on_error, [], []

    def __call__(self, message: str, fatal: bool = False) -> None:
        """Note a problem; a ``fatal`` one (an id given twice: which entry is meant?) stops the
        read even where the others are skipped, with them all."""
        (self.fatal if fatal else self.found).append(message)

    def report(self) -> None:
        problems = self.fatal + self.found
        if not problems:
            return
        listing = "\n".join(f"  {m}" for m in problems)
        if self.on_error == "skip" and not self.fatal:
            warnings.warn(f"{self.source}: skipping {len(problems)} annotations that cannot be used:\n{listing}",
                          stacklevel=3)  # fmt: skip
        elif len(problems) == 1:
            raise AnnotationError(problems[0])
        else:
            raise AnnotationError(f"{self.source}: {len(problems)} annotations cannot be used:\n{listing}")


def _load_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding=ENCODING)
    except OSError as err:
        raise AnnotationError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: cannot read as a UTF-8 JSON file ({err})") from None
    try:
        data = parse_json(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except ValueError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise AnnotationError(f"{path}: expected a COCO object with 'images', 'annotations' and 'categories' lists")
    if not isinstance(data.get("annotations", []), list):
        raise AnnotationError(f"{path}: 'annotations' must be a list")
    return data


def read_categories(path: Path, data: dict | None = None) -> CategoryMap:
    """The categories of a COCO file, sorted by id."""
    data = _load_json(path) if data is None else data
    pairs = []
    for entry in data["categories"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or "name" not in entry:
            raise AnnotationError(f"{path}: category {entry!r}: expected an object with an integer 'id' and a 'name'")
        pairs.append((entry["id"], str(entry["name"])))
    if not pairs:
        raise AnnotationError(f"{path}: 'categories' is empty")
    duplicates = sorted(i for i, times in Counter(i for i, _ in pairs).items() if times > 1)
    if duplicates:
        raise AnnotationError(f"{path}: category id {duplicates[0]} appears more than once")
    twice = next((n for n, times in Counter(n for _, n in pairs).items() if times > 1), None)
    if twice is not None:  # a model's classes are named: two categories of one name would be one class
        shared = ", ".join(str(i) for i, n in sorted(pairs) if n == twice)
        raise AnnotationError(f"{path}: category name {twice!r} is given to ids {shared}; expected one name a category")
    pairs.sort()
    return CategoryMap([i for i, _ in pairs], [n for _, n in pairs])


#: where a COCO file's ``file_name`` is looked up, relative to the dataset folder
IMAGE_FOLDERS = ("", "images")
#: the instance annotations of COCO's download: ``annotations/instances_val2017.json``
OFFICIAL_FILE = re.compile(r"instances_(train|val|test)(\d{4})\.json")


@dataclass
class CocoFile:
    """One split's annotation file, and the folders (relative to the dataset folder) that
    the ``file_name`` of its images is relative to."""

    path: Path
    image_folders: tuple[str, ...] = IMAGE_FOLDERS


def coco_split_files(root: Path) -> dict[str, CocoFile] | None:
    """The split files a COCO folder brings, by stage, or None if it brings none:
    ``train.json``, ``val.json``, ``test.json`` (images under ``root`` or ``root/images``), else
    COCO's download layout, ``annotations/instances_<split><year>.json`` with each split's
    images in ``root/<split><year>/``. A train file and at least one of val and test: COCO's
    own test annotations are not public, so a download has train and val only."""
    found = {s: CocoFile(root / f"{s}.json") for s in STAGES if (root / f"{s}.json").is_file()}
    if not found:
        official: dict[str, list[Path]] = {}
        for path in sorted((root / "annotations").glob("instances_*.json")):
            match = OFFICIAL_FILE.fullmatch(path.name)
            if match and path.is_file():
                official.setdefault(match[1], []).append(path)
        for stage, paths in official.items():
            if len(paths) > 1:
                names = " and ".join(p.name for p in paths)
                raise ConfigError(f"{root / 'annotations'}: {names}: expected one {stage} file (move the others away)")
            found[stage] = CocoFile(paths[0], (paths[0].stem.removeprefix("instances_"),))
    if not found:
        return None
    names = ", ".join(f.path.name for f in found.values())
    if "train" not in found:
        raise ConfigError(f"{root}: found {names} but no train annotations (train.json or instances_train<year>.json)")
    if len(found) == 1:
        raise ConfigError(f"{root}: found {names} but neither val nor test annotations beside it")
    return found


def voc_split_lists(root: Path, records: list[DetectionRecord]) -> ListedSplits | None:
    """The split a Pascal VOC folder brings (each stage's image files), or None where it brings
    none: ``ImageSets/Main/train.txt`` (or ``trainval.txt``, VOC2007's and mmdetection's) with
    ``val.txt`` and/or ``test.txt``, one image id a line, the name of its XML file (what
    torchvision's ``VOCDetection`` reads as its ``image_set``), as COCO's split files. Lists that
    make no split (a test list alone, as VOC2007's test download holds) are said in a warning,
    and the images are split by seed. Each id is one of ``records``: an id whose XML is missing
    is an error naming the list; one whose XML was left out as bad (``on_bad_annotation: skip``)
    stays out."""
    folder = root / "ImageSets" / "Main"
    found = {n: folder / f"{n}.txt" for n in ("train", "trainval", "val", "test") if (folder / f"{n}.txt").is_file()}
    if not found:
        return None
    train = found.get("train", found["trainval"] if "trainval" in found and "val" not in found else None)
    held_out = {stage: found[stage] for stage in ("val", "test") if stage in found}
    if train is None or not held_out:
        names = ", ".join(p.name for p in found.values())
        warnings.warn(f"{folder}: {names} make no split (expected train.txt or trainval.txt with val.txt or "
                      "test.txt); the images are split by data.seed", stacklevel=2)  # fmt: skip
        return None
    paths = {"train": train, **held_out}
    by_id = {Path(r.source).stem: r.file for r in records}
    lists, seen = {}, {}
    for stage, path in paths.items():
        lists[stage] = []
        for number, image_id in enumerate(read_lines(path), start=1):
            if not image_id:
                continue
            if leaves_folder(image_id):  # refused before anything there is looked at
                raise AnnotationError(f"{path} line {number}: image id {image_id!r} names a file outside the data "
                                      "folder; expected the name of an annotation in Annotations/")  # fmt: skip
            if image_id not in by_id:
                if not (root / "Annotations" / f"{image_id}.xml").is_file():
                    raise AnnotationError(f"{path} line {number}: image id {image_id!r} has no Annotations/"
                                          f"{image_id}.xml")  # fmt: skip
                continue  # its annotation was bad, and skipped
            if image_id in seen:
                raise AnnotationError(f"{path} line {number}: image id {image_id!r} is also in {seen[image_id]}")
            seen[image_id] = path.name
            lists[stage].append(by_id[image_id])
    return ListedSplits(lists, paths)


def find_image(root: Path, file_name: str, folders: tuple[str, ...] = IMAGE_FOLDERS) -> str | None:
    """``file_name`` relative to one of ``folders`` under ``root``, as a path relative to ``root``."""
    for folder in folders:
        candidate = Path(folder) / file_name
        if (root / candidate).is_file():
            return candidate.as_posix()
    return None


def size_error(size: tuple[int, int], declared: tuple[int, int], said_by: str = "its annotation") -> str | None:
    """Why an image whose upright ``size`` (width, height) is not the size ``said_by`` declares
    cannot be trained on (its boxes are in the declared pixels), or None. Where it is that size
    turned a quarter, the likely cause is named: tools that ignore EXIF label a phone photo in its
    stored pixels."""
    size, declared = tuple(size), tuple(declared)
    if size == declared:
        return None
    turned = " (the upright image turned a quarter: labelled as stored, without its EXIF orientation?)"
    return (f"is {size[0]}x{size[1]} pixels but {said_by} says {declared[0]}x{declared[1]}"
            + (turned if size == declared[::-1] else ""))  # fmt: skip


def check_annotated_size(root: Path, record: DetectionRecord, width: int, height: int) -> None:
    """An image (upright) must be the size its annotation gives: its boxes are in those pixels.
    A VOC image has no id of its own: the message names its XML file."""
    voc = record.source.endswith(".xml")
    said_by = f"the <size> in {record.source}" if voc else "its annotation"
    problem = size_error((width, height), (record.width, record.height), said_by)
    if problem:
        raise AnnotationError(f"{root / record.file}{'' if voc else f': image id {record.image_id}'} {problem}")


def _misdeclared(root: Path, record: DetectionRecord, fail: _Problems, sized: dict[str, bool]) -> bool:
    """Whether ``record``'s declared size is not its file's, said once through ``fail`` (``sized``
    keeps the answers). Asked where a box lies outside that size: a size set too small puts its
    boxes outside, and it is the mistake to name, not each box."""
    if record.file not in sized:
        try:
            check_annotated_size(root, record, *_upright_size(root / record.file))
            sized[record.file] = False
        except AnnotationError as err:
            sized[record.file] = True
            fail(str(err))
    return sized[record.file]


def _upright_size(path: Path) -> tuple[int, int]:
    try:
        return image_size(path)
    except BadFileError as err:
        raise AnnotationError(str(err)) from None


def read_coco(
    path: str | Path,
    root: str | Path | None = None,
    on_error: str = "error",
    image_folders: tuple[str, ...] = IMAGE_FOLDERS,
) -> DetectionData:
    """Read and check one COCO file; images are looked up in ``image_folders`` under ``root``
    (default: the file's folder), and recorded relative to ``root``. Crowd annotations are
    kept, flagged in ``iscrowd``."""
    path = Path(path)
    fail = _Problems(path, on_error)
    root = path.parent if root is None else Path(root)
    data = _load_json(path)
    categories = read_categories(path, data)

    records: dict[int, DetectionRecord] = {}
    seen_files: set[str] = set()
    for entry in data["images"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not entry.get("file_name"):
            raise AnnotationError(f"{path}: image {entry!r}: expected an integer 'id' and a 'file_name'")
        image_id, file_name = entry["id"], str(entry["file_name"])
        if image_id in records:
            fail(f"{path}: image id {image_id} appears more than once", fatal=True)
            continue
        if leaves_folder(file_name):  # refused before anything there is looked at
            fail(f"{path}: image id {image_id}: file_name {file_name!r} lies outside the data folder; expected a "
                 "path inside it")  # fmt: skip
            continue
        found = find_image(root, file_name, image_folders)
        if found is None:
            places = " or ".join(str(root / folder) for folder in image_folders)
            fail(f"{path}: image id {image_id}: file_name {file_name!r} is not in {places}")
            continue
        if found in seen_files:
            fail(f"{path}: image id {image_id}: file {found} is listed more than once", fatal=True)
            continue
        seen_files.add(found)
        width, height = entry.get("width"), entry.get("height")
        if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in (width, height)):
            width, height = _upright_size(root / found)  # width/height are optional: read the header
        records[image_id] = DetectionRecord(found, image_id, int(width), int(height), source=str(path))

    image_ids = {int(e["id"]) for e in data["images"]}
    seen_annotations: set[object] = set()
    sized: dict[str, bool] = {}  # _misdeclared's answers
    for ann in data.get("annotations", []):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        where = f"{path}: annotation id {ann_id}"
        if not isinstance(ann_id, int | str):  # a list or an object would not even compare as a key
            raise AnnotationError(
                f"{path}: annotation {ann!r}: expected an object with an 'id' (a whole number or a string)"
            )
        if ann_id in seen_annotations:
            fail(f"{where} appears more than once", fatal=True)
            continue
        seen_annotations.add(ann_id)
        image_id, category_id, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        if not isinstance(image_id, int) or image_id not in image_ids:
            fail(f"{where}: image_id {image_id!r} is not among the file's images")
            continue
        if image_id not in records:  # its image file was missing and skipped
            continue
        record = records[image_id]
        if not isinstance(category_id, int) or category_id not in categories:
            fail(f"{where}: category_id {category_id!r} is not one of the categories {categories.ids}")
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            fail(f"{where}: bbox {bbox!r}: expected [x, y, width, height], four finite numbers")
            continue
        x, y, w, h = (float(v) for v in bbox)
        problem = box_error((x, y, x + w, y + h), (record.width, record.height), f"its image {record.file}")
        if problem:
            if not _misdeclared(root, record, fail, sized):
                fail(f"{where}: bbox {bbox} (x, y, width, height): {problem}")
            continue
        area = ann.get("area", 0)
        if not (isinstance(area, int | float) and math.isfinite(area) and area >= 0):
            fail(f"{where}: area {area!r}: expected a number of pixels² (0 or left out: the box's)")
            continue
        crowd = ann.get("iscrowd", 0)
        if not isinstance(crowd, int | float) or crowd not in (0, 1):  # a string "0" would be true
            fail(f"{where}: iscrowd {crowd!r}: expected 0 or 1")
            continue
        x1, y1, x2, y2 = clipped((x, y, x + w, y + h), (record.width, record.height))
        record.boxes.append([x1, y1, x2, y2])
        record.labels.append(categories.label(category_id))
        record.iscrowd.append(int(crowd))
        record.annotation_ids.append(ann_id)
        record.areas.append(float(area) or (x2 - x1) * (y2 - y1))
    fail.report()
    return DetectionData(categories, list(records.values()))


# --- Pascal VOC ---------------------------------------------------------------------


def voc_classes(root: Path) -> list[str]:
    """Sorted object names over ``root/Annotations/*.xml``. A file that is not XML is left to
    :func:`read_voc`, which names it with every other problem of the folder."""
    names, bad = set(), []
    for xml_path in _voc_files(root):
        try:
            names |= {obj.findtext("name", "").strip() for obj in _parse_voc(xml_path).iter("object")}
        except AnnotationError as err:
            bad.append(str(err))
    names.discard("")
    if not names:
        problems = _Problems(root / "Annotations", "error")
        for message in bad or [f"{root / 'Annotations'}: no <object> with a <name> in any XML file"]:
            problems(message)
        problems.report()
    return sorted(names)


def _voc_files(root: Path) -> list[Path]:
    files = sorted((root / "Annotations").glob("*.xml"))
    if not files:
        raise AnnotationError(f"{root / 'Annotations'}: no .xml files")
    return files


def _parse_voc(xml_path: Path) -> ET.Element:
    try:
        return ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as err:
        raise AnnotationError(f"{xml_path}: not valid XML ({err})") from None


def read_voc(root: str | Path, class_names: list[str], on_error: str = "error") -> DetectionData:
    """A Pascal VOC folder: ``Annotations/<name>.xml`` with ``<filename>``, ``<size>`` and
    ``<object><name/><bndbox>xmin ymin xmax ymax</bndbox></object>``; images in
    ``JPEGImages/`` (or next to the XML's ``<filename>`` under ``root``). ``difficult``
    objects are kept as crowd (ignored by training and scoring, as COCO crowds are).
    Annotation ids are ``<xml name>#<object index>`` in messages."""
    root = Path(root)
    fail = _Problems(root / "Annotations", on_error)
    categories = CategoryMap(list(range(len(class_names))), list(class_names))
    records = []
    sized: dict[str, bool] = {}  # _misdeclared's answers
    annotated: dict[str, Path] = {}  # image file → the XML that annotates it
    for image_id, xml_path in enumerate(_voc_files(root)):
        try:
            tree = _parse_voc(xml_path)
        except AnnotationError as err:
            fail(str(err))
            continue
        file_name = tree.findtext("filename", "").strip() or f"{xml_path.stem}.jpg"
        if leaves_folder(file_name):  # refused before anything there is looked at
            fail(f"{xml_path}: image {file_name!r} lies outside the data folder; expected a path inside it")
            continue
        found = next(
            (c.as_posix() for c in (Path("JPEGImages") / file_name, Path(file_name)) if (root / c).is_file()), None
        )
        if found is None:
            fail(f"{xml_path}: image {file_name!r} is in neither {root / 'JPEGImages'} nor {root}")
            continue
        if found in annotated:  # it would be sampled twice, maybe into two splits
            fail(f"{xml_path}: image {found} is annotated by {annotated[found].name} too; expected one XML file "
                 "an image", fatal=True)  # fmt: skip
            continue
        annotated[found] = xml_path
        try:
            width, height = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
        except (TypeError, ValueError):
            width = height = 0
        if width <= 0 or height <= 0:  # left out, or 0 where an exporter did not know it: the file's own
            width, height = _upright_size(root / found)
        record = DetectionRecord(found, image_id, width, height, source=str(xml_path))
        for index, obj in enumerate(tree.iter("object")):
            where = f"{xml_path}: object {index}"
            name = obj.findtext("name", "").strip()
            if name not in class_names:
                fail(f"{where}: class {name!r} is not one of {class_names}")
                continue
            try:
                x1, y1, x2, y2 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                fail(f"{where}: expected <bndbox> with numeric xmin, ymin, xmax, ymax")
                continue
            problem = box_error((x1, y1, x2, y2), (width, height), f"its image {found}")
            if problem:
                if not _misdeclared(root, record, fail, sized):
                    fail(f"{where}: {problem}")
                continue
            x1, y1, x2, y2 = clipped((x1, y1, x2, y2), (width, height))
            record.boxes.append([x1, y1, x2, y2])
            record.labels.append(categories.label(class_names.index(name)))
            record.iscrowd.append(int(obj.findtext("difficult", "0").strip() == "1"))
            record.annotation_ids.append(index)
            record.areas.append((x2 - x1) * (y2 - y1))
        records.append(record)
    fail.report()
    return DetectionData(categories, records)


# --- writing ------------------------------------------------------------------------


def coco_results(predictions: list[dict], categories: CategoryMap) -> list[dict]:
    """Detections in the COCO results format (``image_id``, ``category_id``, ``bbox`` as
    ``[x, y, width, height]``, ``score``), from ``{"image_id", "boxes" (x1y1x2y2), "labels",
    "scores"}`` per image — what ``pycocotools.COCO.loadRes`` reads."""
    results = []
    for pred in predictions:
        for box, label, score in zip(pred["boxes"], pred["labels"], pred["scores"], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": int(pred["image_id"]),
                    "category_id": categories.category_id(int(label)),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 4),
                }
            )
    return results


def coco_document(records: list[DetectionRecord], categories: CategoryMap) -> dict:
    """Records → a COCO object (``file_name`` relative to the dataset folder)."""
    annotations = []
    for record in records:
        for box, label, crowd, ann_id, area in zip(
            record.boxes, record.labels, record.iscrowd, record.annotation_ids, record.areas, strict=True
        ):
            x1, y1, x2, y2 = box
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": record.image_id,
                    "category_id": categories.category_id(label),
                    "bbox": [x1, y1, w, h],
                    "area": area,
                    "iscrowd": crowd,
                }
            )
    return {
        "images": [{"id": r.image_id, "file_name": r.file, "width": r.width, "height": r.height} for r in records],
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in zip(categories.ids, categories.names, strict=True)],
    }
