"""detection2d: the COCO reader (category mapping, malformed files), the CLI fit and evaluation,
prediction on raw files (agreeing with forward and with evaluate) and ONNX export of the heads."""

import copy
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cnnsuite.tasks.detection2d import datamodule as detection_data
from cnnsuite.tasks.detection2d.datamodule import DetectionDataModule
from cnnsuite.tasks.detection2d.default_data import compose_canvas
from cnnsuite.tasks.detection2d.module import REFERENCES, BackboneFPN, DetectionModule, DetectionScores
from conftest import ROOT, watch_network_and_plots
from conftest import fit as run_fit
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics.detection import MeanAveragePrecision

from cnnsuite.backbone import build_backbone
from cnnsuite.cli import main
from cnnsuite.data import BadFileError
from cnnsuite.data.coco import AnnotationError, coco_results, read_coco, read_voc
from cnnsuite.data.digits import digit_scans, digit_split
from cnnsuite.data.inputs import Input
from cnnsuite.errors import ConfigError, StateError
from cnnsuite.trust.checkpoint import rebuild, rebuild_for_inference
from cnnsuite.use.export import OnnxNetwork, export
from cnnsuite.use.predict import Predictor

CONFIG = str(ROOT / "tasks" / "detection2d" / "config.yaml")
# COCO-style category ids with gaps, listed out of order
CATEGORIES = [{"id": 17, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 90, "name": "owl"}]
CATEGORY_NAMES = {c["name"] for c in CATEGORIES}


def make_coco_folder(root, images=12, size=64, seed=0, images_subdir=True):
    """A tiny COCO dataset: bright squares (cat), discs (dog) and crosses (owl) on noise."""
    rng = np.random.default_rng(seed)
    folder = root / "images" if images_subdir else root
    folder.mkdir(parents=True)
    doc = {"images": [], "annotations": [], "categories": CATEGORIES}
    ann_id = 100
    for i in range(images):
        canvas = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
        for k in range(2):
            cat = CATEGORIES[(i + k) % 3]
            w = int(rng.integers(12, 20))
            x, y = int(rng.integers(0, size // 2 - w)) + k * size // 2, int(rng.integers(0, size - w))
            canvas[y : y + w, x : x + w] = 220 if cat["name"] == "cat" else 40
            doc["annotations"].append(
                {"id": ann_id, "image_id": i + 1, "category_id": cat["id"], "bbox": [x, y, w, w],
                 "area": w * w, "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + w]]}
            )  # fmt: skip
            ann_id += 1
        Image.fromarray(canvas).save(folder / f"img{i}.png")
        doc["images"].append({"id": i + 1, "file_name": f"img{i}.png", "width": size, "height": size})
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


@pytest.fixture
def coco_folder(tmp_path):
    return make_coco_folder(tmp_path / "user_coco")


def fit(tmp_path, *extra):
    return run_fit("detection2d", tmp_path, *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(checkpoint, COCO folder)`` of a short FCOS training on 64-px images, shared by the
    prediction tests of this file."""
    root = tmp_path_factory.mktemp("trained")
    folder = make_coco_folder(root / "coco")
    run = fit(
        root, "--data.data_dir", str(folder), "--data.batch_size", "4", "--trainer.max_epochs", "2",
        "--model.init_args.min_size", "64", "--model.init_args.max_size", "64", "--evaluate", "false",
    )  # fmt: skip
    return run / "checkpoints" / "best.ckpt", folder


def images_of_sizes(folder, out, sizes):
    """The COCO folder's first images resized to ``sizes`` ((width, height) each), as files."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        paths.append(out / f"resized{i}.png")
        Image.open(folder / "images" / f"img{i}.png").resize(size).save(paths[-1])
    return paths


def as_tensors(prediction):
    found = prediction["detections"]
    boxes = torch.tensor([d["box"] for d in found], dtype=torch.float32).reshape(-1, 4)
    return boxes, torch.tensor([d["score"] for d in found]), [d["class"] for d in found]


def test_category_ids_map_to_contiguous_labels_and_back(coco_folder):
    data = read_coco(coco_folder / "annotations.json")
    cats = data.categories
    assert cats.ids == [3, 17, 90] and cats.names == ["cat", "dog", "owl"]
    assert [cats.label(i) for i in (3, 17, 90)] == [0, 1, 2]
    assert [cats.category_id(label) for label in (0, 1, 2)] == [3, 17, 90]
    raw = json.loads((coco_folder / "annotations.json").read_text())
    first = data.records[0]
    assert first.file == "images/img0.png"  # found under DIR/images
    truth = [a for a in raw["annotations"] if a["image_id"] == first.image_id]
    assert [cats.category_id(label) for label in first.labels] == [a["category_id"] for a in truth]
    x, y, w, h = truth[0]["bbox"]
    assert first.boxes[0] == [x, y, x + w, y + h]

    dm = DetectionDataModule(data_dir=str(coco_folder))
    assert (dm.class_names, dm.num_classes, dm.in_channels) == (["cat", "dog", "owl"], 3, 3)


def write_bad(folder, mutate):
    doc = json.loads((folder / "annotations.json").read_text())
    mutate(doc)
    (folder / "annotations.json").write_text(json.dumps(doc))
    return folder / "annotations.json"


@pytest.mark.parametrize(
    "case, mutate, message",
    [
        ("outside", lambda d: d["annotations"][3].update(bbox=[50, 10, 30, 10]), r"annotation id 103: .*outside"),
        ("zero area", lambda d: d["annotations"][5].update(bbox=[5, 5, 0, 9]), r"annotation id 105: .*zero"),
        ("unknown category", lambda d: d["annotations"][2].update(category_id=4), r"annotation id 102: category_id 4"),
        ("unknown image", lambda d: d["annotations"][1].update(image_id=999), r"annotation id 101: image_id 999"),
        ("missing file", lambda d: d["images"][4].update(file_name="gone.png"), r"image id 5: .*'gone.png'"),
        ("bad area", lambda d: d["annotations"][4].update(area="big"), r"annotation id 104: area 'big'"),
        # a string "0" is true in Python: it made the object a crowd, neither trained on nor scored
        ("crowd a string", lambda d: d["annotations"][6].update(iscrowd="0"), r"annotation id 106: iscrowd '0'"),
        # values that are not even keys were a TypeError (unhashable) under jsonargparse's union traceback
        ("image id a list", lambda d: d["annotations"][1].update(image_id=[1]), r"annotation id 101: image_id \[1\]"),
        (
            "category an object",
            lambda d: d["annotations"][2].update(category_id={"x": 1}),
            r"annotation id 102: category_id \{'x': 1\}",
        ),
    ],
)
def test_malformed_annotations_name_file_and_id(tmp_path, case, mutate, message):
    folder = make_coco_folder(tmp_path / "c")
    path = write_bad(folder, mutate)
    with pytest.raises(AnnotationError, match=message) as err:
        DetectionDataModule(data_dir=str(folder))
    assert str(path) in str(err.value)
    # the documented alternative: skip it, with a warning naming it
    with pytest.warns(UserWarning, match=message):
        dm = DetectionDataModule(data_dir=str(folder), on_bad_annotation="skip")
    total = sum(len(r.boxes) for r in dm._load().records)
    assert total == 23 if case != "missing file" else total == 22


def test_two_categories_of_one_name_are_the_files_error(tmp_path):
    """A model's classes are named: two COCO categories of one name were refused as
    ``model.class_names`` names one twice, a key the user never set."""
    folder = make_coco_folder(tmp_path / "coco")
    doc = json.loads((folder / "annotations.json").read_text())
    doc["categories"][1]["name"] = doc["categories"][0]["name"]
    (folder / "annotations.json").write_text(json.dumps(doc))
    name, ids = doc["categories"][0]["name"], sorted(c["id"] for c in doc["categories"][:2])
    said = rf"annotations.json: category name '{name}' is given to ids {ids[0]}, {ids[1]}; expected one name a"
    with pytest.raises(AnnotationError, match=said):
        DetectionDataModule(data_dir=str(folder))


def test_an_annotation_id_that_is_no_key_and_an_infinite_image_size_are_handled(tmp_path):
    folder = make_coco_folder(tmp_path / "c")
    write_bad(folder, lambda d: d["annotations"][0].update(id=[3]))
    with pytest.raises(AnnotationError, match=r"annotation .*: expected an object with an 'id' \(a whole number or"):
        DetectionDataModule(data_dir=str(folder))
    folder = make_coco_folder(tmp_path / "d")
    write_bad(folder, lambda d: d["images"][0].update(width=float("inf")))  # read from the file's header instead
    assert sum(len(r.boxes) for r in DetectionDataModule(data_dir=str(folder))._load().records) == 24


def test_every_bad_annotation_of_a_file_is_named_at_once(tmp_path):
    def mutate(doc):
        doc["annotations"][3].update(bbox=[50, 10, 30, 10])
        doc["annotations"][5].update(bbox=[5, 5, 0, 9])
        doc["images"][4].update(file_name="gone.png")

    path = write_bad(make_coco_folder(tmp_path / "c"), mutate)
    with pytest.raises(AnnotationError) as err:
        read_coco(path)
    message = str(err.value)
    assert message.startswith(f"{path}: 3 annotations cannot be used:")
    assert all(part in message for part in ("annotation id 103", "annotation id 105", "'gone.png'"))

    # ids given twice are said with the rest, and stop the read even where the rest is skipped
    def twice(doc):
        mutate(doc)
        doc["images"].append({**doc["images"][0], "file_name": doc["images"][1]["file_name"]})
        doc["images"].append({**doc["images"][2], "id": 500})
        doc["annotations"].append(doc["annotations"][6])

    path = write_bad(make_coco_folder(tmp_path / "d"), twice)
    for on_error in ("error", "skip"):
        with pytest.raises(AnnotationError) as err:
            read_coco(path, on_error=on_error)
        message = str(err.value)
        assert message.startswith(f"{path}: 6 annotations cannot be used:")
        assert "image id 1 appears more than once" in message and "annotation id 106 appears more than once" in message
        assert "image id 500: file images/img2.png is listed more than once" in message and "'gone.png'" in message


def test_a_bad_annotation_file_is_one_line_from_the_cli(tmp_path, capsys):
    """An annotation without its ``id`` (COCO requires one) is the user's file to fix: one line,
    exit status 2, not a traceback."""
    path = write_bad(make_coco_folder(tmp_path / "c"), lambda d: d["annotations"][0].pop("id"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "tasks/detection2d/config.yaml"), "--data.data_dir", str(path.parent)])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"cnnsuite fit: error: {path}: annotation ") and "expected an object with an 'id'" in line


def test_a_bad_image_of_any_split_is_named_before_training(tmp_path):
    """The test split is read after the last epoch: the headers of every split's images are
    read before the first, and every image that does not read, or is not the size its
    annotation gives, is named in one error; ``on_bad_annotation: skip`` leaves them out."""
    folder = make_coco_folder(tmp_path / "c")
    images = [f"images/img{i}.png" for i in range(12)]
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": images[:8], "val": images[8:9], "test": images[9:]}))
    for i in (3, 11):  # a training image and a test image
        (folder / images[i]).write_bytes(b"not an image at all")
    write_bad(folder, lambda d: d["images"][10].update(width=80))  # a test image of 64x64
    with pytest.raises(BadFileError, match="3 of 12 images cannot be used") as caught:
        fit(tmp_path, "--data.data_dir", str(folder), "--data.split_file", str(split_file), "--trainer.max_epochs",
            "1", "--model.init_args.min_size", "64", "--model.init_args.max_size", "64")  # fmt: skip
    message = str(caught.value)
    assert all(f"img{i}.png: cannot decode as an image" in message for i in (3, 11))
    assert "img10.png: image id 11 is 64x64 pixels but its annotation says 80x64" in message
    assert not (tmp_path / "runs" / "version_0" / "checkpoints").exists(), "trained before naming the test images"

    dm = DetectionDataModule(data_dir=str(folder), split_file=str(split_file), on_bad_annotation="skip")
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        dm.setup("fit")  # one warning before training, naming the bad images of every split
        for stage, kept in (("train", 7), ("val", 1), ("test", 1)):
            dataset = dm.datasets[stage]
            assert len(dataset) == kept and all(dataset[i][0].shape == (3, 64, 64) for i in range(kept))
    (said,) = [str(w.message) for w in caught_warnings if "skipping" in str(w.message)]
    assert said.startswith("skipping 3 of 12 images") and all(f"img{i}.png" in said for i in (3, 10, 11))


def write_polygon_export(root, images=6, size=160):
    """A COCO export as annotation tools write one: each object a polygon (``segmentation``),
    its ``bbox`` the polygon's bounds and its ``area`` the polygon's (pycocotools' mask area).
    The objects are triangles, so a triangle's area is half its box's: a 40-px one is
    "medium" by its box (1,600 px²) but "small" by its area, a 110-px one "large" by its box
    but "medium" by its area. Returns the folder."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    doc = {"images": [], "annotations": [], "categories": CATEGORIES}
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        doc["images"].append({"id": 500 + i, "file_name": f"p{i}.png", "width": size, "height": size})
        for k, (x, side) in enumerate(((4, 40), (46, 110))):
            y = int(rng.integers(0, size - side))
            polygon = [x, y, x + side, y + side, x, y + side]
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], size, size))
            doc["annotations"].append(
                {"id": 9000 + 2 * i + k, "image_id": 500 + i, "category_id": CATEGORIES[(i + k) % 3]["id"],
                 "segmentation": [polygon], "area": float(mask_utils.area(rle)),
                 "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0}
            )  # fmt: skip
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def test_size_buckets_follow_the_annotations_area_as_cocoeval_does(tmp_path, monkeypatch):
    """map_small/medium/large as pycocotools' COCOeval gives them on the same predictions:
    COCO buckets an object by its annotation's ``area`` (the polygon's), not by its box."""
    folder = write_polygon_export(tmp_path / "export")
    dm = DetectionDataModule(data_dir=str(folder))
    dataset = dm.make_dataset([sample_id for sample_id, _ in dm.list_samples()], "test")
    images, targets = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    # Predictions near the truth, some shifted off, some of the wrong class, plus a stray box;
    # whole pixels and two-decimal scores, so that the COCO results file holds them exactly.
    predictions = {}
    for n, target in enumerate(targets):
        boxes = target["boxes"] + torch.tensor([[0.0, 0, 0, 0], [float(6 * (n % 4)), 0, 0, 0]])
        boxes = torch.cat([boxes, torch.tensor([[100.0, 2, 150, 40]])])
        labels = torch.cat([target["labels"], torch.tensor([n % 3])])
        labels[0] = (labels[0] + (n % 3 == 2)) % 3
        scores = torch.tensor([0.9 - 0.1 * (n % 5), 0.5 + 0.05 * n, 0.6])
        predictions[target["image_id"]] = {"boxes": boxes, "labels": labels, "scores": scores}
    module = DetectionModule(num_classes=3, in_channels=3, class_names=dm.class_names, min_size=64, max_size=64)
    monkeypatch.setattr(DetectionModule, "forward", lambda self, ims: [predictions[t["image_id"]] for t in targets])
    module.on_test_epoch_start()
    module.test_step((list(images), list(targets)), 0)
    ours = module.test_metrics.compute()

    gt = COCO(str(folder / "annotations.json"))
    results = coco_results([{"image_id": k, **v} for k, v in predictions.items()], dm.categories)
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
    cocoeval = dict(zip(keys, evaluator.stats[: len(keys)], strict=True))
    assert cocoeval["map_small"] > 0 and cocoeval["map_medium"] > 0  # both buckets hold objects
    for key, value in cocoeval.items():
        assert float(ours[f"test/{key}"]) == pytest.approx(value, abs=1e-6), key


def test_a_crowd_region_missed_or_found_leaves_the_map_of_the_objects(monkeypatch):
    """Scoring passes each box's ``iscrowd`` on, as COCOeval wants it: a crowd region left
    undetected is no miss and a detection inside it no false positive, so finding exactly the
    objects scores 1.0 with or without a box on the crowd."""
    module = DetectionModule(num_classes=2, in_channels=1, class_names=["a", "b"], min_size=64, max_size=64)
    boxes = torch.tensor([[4.0, 4.0, 30.0, 30.0], [34.0, 8.0, 60.0, 40.0]])
    target = {"boxes": boxes, "labels": torch.tensor([0, 1]), "iscrowd": torch.tensor([0, 1]),
              "area": torch.tensor([676.0, 832.0]), "image_id": 7}  # fmt: skip
    for found in ([0], [0, 1]):
        scores = torch.tensor([0.9, 0.8])[found]
        detections = {"boxes": boxes[found], "labels": target["labels"][found], "scores": scores}
        monkeypatch.setattr(DetectionModule, "forward", lambda self, images, d=detections: [d])
        module.on_test_epoch_start()
        module.test_metrics.reset()
        module.test_step(([torch.rand(1, 64, 64)], [target]), 0)
        assert float(module.test_metrics.compute()["test/map"]) == pytest.approx(1.0), found


@pytest.mark.parametrize("cache_limit_mb", [1024, 0])
def test_an_image_is_decoded_once_when_its_split_fits_the_cache(coco_folder, monkeypatch, cache_limit_mb):
    """Within ``data.cache_limit_mb`` a split's images are decoded when its dataset is built and
    every epoch reads them from memory; without a cache each access decodes the file."""
    decoded: list[str] = []
    load = detection_data.load_image

    def counted(path, channels):
        decoded.append(path.name)
        return load(path, channels)

    monkeypatch.setattr(detection_data, "load_image", counted)
    dm = DetectionDataModule(data_dir=str(coco_folder), cache_limit_mb=cache_limit_mb)
    dm.setup("fit")
    train = dm.datasets["train"]
    built = len(decoded)
    for _epoch in range(2):
        items = [train[i] for i in range(len(train))]
    if cache_limit_mb:  # each image of the splits built, once
        assert len(decoded) == built == len(set(decoded)) >= len(train)
    else:
        assert built == 0 and len(decoded) == 2 * len(train)
    image, target = items[0]  # as the file and its annotation say
    torch.testing.assert_close(image, load(coco_folder / train.records[train.ids[0]].file, 3))
    assert target["image_id"] == train.records[train.ids[0]].image_id


def test_an_image_changed_after_the_check_is_named_when_read_not_given_stale_boxes(coco_folder):
    """Without a cache each access reads the file again: one replaced by an image of another
    size since the check before training is named when it is read, rather than handed out
    with boxes in the pixels of the image it was."""
    dm = DetectionDataModule(data_dir=str(coco_folder), cache_limit_mb=0)
    dm.setup("fit")
    train = dm.datasets["train"]
    path = coco_folder / train.ids[0]
    Image.new("RGB", (80, 64)).save(path)
    with pytest.raises(AnnotationError, match=rf"{path}: image id \d+ is 80x64 pixels but its annotation says 64x64"):
        train[0]


def test_following_a_models_classes_keeps_an_image_without_objects_unlabelled(tmp_path):
    """Labelled by a checkpoint's classes in another order, an image without objects stays -1
    (none) in the data's samples: it is no object of the model's last class."""
    folder = make_coco_folder(tmp_path / "coco", images=40)
    doc = json.loads((folder / "annotations.json").read_text())
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 1]
    (folder / "annotations.json").write_text(json.dumps(doc))
    dm = DetectionDataModule(data_dir=str(folder))
    assert dict(dm.samples())["images/img0.png"] == -1
    dm.follow_classes(list(reversed(dm.class_names)))
    assert dict(dm.samples())["images/img0.png"] == -1


def test_background_images_leave_objects_to_score_in_every_split(tmp_path):
    """Images without objects are normal in COCO. With 8 of 24 such images, the seed's split
    (too small a val for every class) put only background images in val: one epoch trained, then
    the run stopped on a missing val/map. The split now keeps images with objects in val and
    test, and a given split without any is one line saying what to do."""

    folder = make_coco_folder(tmp_path / "coco", images=24)
    doc = json.loads((folder / "annotations.json").read_text())
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] % 3 != 0]
    (folder / "annotations.json").write_text(json.dumps(doc))
    boxed = {f"images/img{i}.png" for i in range(24) if (i + 1) % 3 != 0}
    # too small a val for every class: the split is stratified by objects (0) or none (-1)
    assert {label for _, label in DetectionDataModule(data_dir=str(folder)).list_samples()} == {-1, 0}
    for seed in range(4):
        dm = DetectionDataModule(data_dir=str(folder), seed=seed, data_root=str(tmp_path / "data"))
        dm.setup("fit")
        assert all(boxed.intersection(dm.splits[stage]) for stage in ("val", "test")), (seed, dm.splits)

    background = sorted(f"images/img{i}.png" for i in range(24) if (i + 1) % 3 == 0)
    split = {"train": sorted(boxed)[2:], "val": background[:2], "test": sorted(boxed)[:2] + background[2:]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    dm = DetectionDataModule(data_dir=str(folder), split_file=str(tmp_path / "split.json"),
                             data_root=str(tmp_path / "data"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"the val split's 2 images hold no object, so mAP has nothing to score"):
        dm.setup("fit")
    # crowd boxes only excuse detections: a val split of crowds alone has nothing to score either
    crowded = sorted(boxed)[:2]
    for annotation in doc["annotations"]:
        annotation["iscrowd"] = int(f"images/img{annotation['image_id'] - 1}.png" in crowded)
    (folder / "annotations.json").write_text(json.dumps(doc))
    split = {"train": sorted(boxed)[4:], "val": crowded, "test": sorted(boxed)[2:4]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    dm = DetectionDataModule(data_dir=str(folder), split_file=str(tmp_path / "split.json"),
                             data_root=str(tmp_path / "data"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"the val split's 2 images hold no object, so mAP has nothing to score"):
        dm.setup("fit")


@pytest.mark.parametrize("ids", [[1] * 10, list(range(1, 10)), [*range(1, 10), "10"], [*range(1, 10), 10.0]])
def test_a_prepared_records_category_ids_are_one_distinct_whole_number_a_class(tmp_path, ids):
    """The ids a results file names each class by: two classes under one id would merge them."""
    dm = DetectionDataModule(data_root=str(tmp_path))
    with pytest.raises(StateError, match=r"category_ids is .*, expected 10 distinct whole numbers, one a class"):
        dm.restore_preprocessing({"category_ids": ids})
    dm.restore_preprocessing({"category_ids": list(range(11, 21))})
    assert dm.categories.ids == list(range(11, 21))


def test_invalid_json_and_missing_split_file(tmp_path, coco_folder):
    saved = (coco_folder / "annotations.json").read_text()
    (coco_folder / "annotations.json").write_bytes("\ufeff".encode() + saved.encode())  # a Windows tool's BOM
    assert DetectionDataModule(data_dir=str(coco_folder)).class_names == ["cat", "dog", "owl"]
    (coco_folder / "annotations.json").write_bytes(saved.replace('"cat"', '"chat_\u00e9"').encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"annotations.json: cannot read as a UTF-8 JSON file \('utf-8' codec"):
        DetectionDataModule(data_dir=str(coco_folder))
    (coco_folder / "annotations.json").write_text('{"images": [}')
    with pytest.raises(AnnotationError, match=r"annotations.json: not valid JSON \(line 1"):
        DetectionDataModule(data_dir=str(coco_folder))
    (coco_folder / "train.json").write_text("{}")
    with pytest.raises(ValueError, match=r"found train.json but neither val nor test annotations"):
        DetectionDataModule(data_dir=str(coco_folder))
    with pytest.raises(ValueError, match="data.format"):
        DetectionDataModule(data_dir=str(coco_folder), format="yolo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither annotations.json"):
        DetectionDataModule(data_dir=str(tmp_path / "empty"))
    official = tmp_path / "official" / "annotations"
    official.mkdir(parents=True)
    (official / "instances_val2017.json").write_text("{}")
    with pytest.raises(ValueError, match=r"found instances_val2017.json but no train annotations"):
        DetectionDataModule(data_dir=str(official.parent))
    for year in (2014, 2017):
        (official / f"instances_train{year}.json").write_text("{}")
    with pytest.raises(ValueError, match=r"instances_train2014.json and instances_train2017.json: expected one"):
        DetectionDataModule(data_dir=str(official.parent))


def test_fixed_split_files_crowd_and_pascal_voc(tmp_path, coco_folder):
    doc = json.loads((coco_folder / "annotations.json").read_text())
    doc["annotations"][0]["iscrowd"] = 1
    parts = {"train": range(0, 8), "val": range(8, 10), "test": range(10, 12)}
    for stage, indices in parts.items():
        part = copy.deepcopy(doc)
        part["images"] = [doc["images"][i] for i in indices]
        keep = {im["id"] for im in part["images"]}
        part["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
        (coco_folder / f"{stage}.json").write_text(json.dumps(part))
    dm = DetectionDataModule(data_dir=str(coco_folder))
    dm.setup("fit")
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    image, target = dm.datasets["train"][0]
    assert image.shape == (3, 64, 64) and image.max() <= 1
    assert target["iscrowd"].tolist() == [1, 0] and target["labels"].tolist() == [1, 0]  # dog (17), cat (3)

    # the same boxes written as Pascal VOC XML
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for record in dm._load().records:
        Image.open(coco_folder / record.file).save(voc / "JPEGImages" / f"{record.image_id}.png")
        objects = "".join(
            f"<object><name>{dm.class_names[lab]}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for b, lab in zip(record.boxes, record.labels, strict=True)
        )
        (voc / "Annotations" / f"{record.image_id}.xml").write_text(
            f"<annotation><filename>{record.image_id}.png</filename>{objects}</annotation>"
        )
    vm = DetectionDataModule(data_dir=str(voc))
    assert vm.class_names == ["cat", "dog", "owl"]
    by_file = {r.file.split("/")[-1]: r for r in read_voc(voc, vm.class_names).records}
    assert by_file["1.png"].boxes == dm._load().records[0].boxes
    # every problem of the folder in one error: each file that is not XML, and a bad box
    (voc / "Annotations" / "3.xml").write_text("<annotation><filename>3.png</filename><object><name>emu")
    (voc / "Annotations" / "5.xml").write_text("")
    four = (voc / "Annotations" / "4.xml").read_text()
    (voc / "Annotations" / "4.xml").write_text(four.replace("<xmin>", "<xmin>-50", 1))
    with pytest.raises(AnnotationError, match=r"3 annotations cannot be used:\n.*3.xml: not valid XML.*\n.*4.xml: "
                                              r"object 0: box .*\n.*5.xml: not valid XML"):  # fmt: skip
        DetectionDataModule(data_dir=str(voc))
    with pytest.warns(UserWarning, match=r"Annotations: skipping 3 annotations that cannot be used:\n.*3.xml: not"
                                         r" valid XML.*\n.*4.xml: object 0: box .*\n.*5.xml") as said:  # fmt: skip
        skipped = DetectionDataModule(data_dir=str(voc), on_bad_annotation="skip")
    assert len([w for w in said if "skipping" in str(w.message)]) == 1, "one warning naming them all"
    assert len(skipped._load().records) == len(dm._load().records) - 2


def test_split_files_naming_an_image_twice_or_other_category_names_are_refused(coco_folder):
    """Fixed split files must agree on their categories, ids and names (a class is read by
    its id), and hold each image once: one in train and test would be scored on after training."""
    doc = json.loads((coco_folder / "annotations.json").read_text())
    parts = {"train": range(0, 8), "val": range(8, 10), "test": range(7, 12)}
    for stage, indices in parts.items():
        keep = {doc["images"][i]["id"] for i in indices}
        part = {**doc, "images": [im for im in doc["images"] if im["id"] in keep],
                "annotations": [a for a in doc["annotations"] if a["image_id"] in keep]}  # fmt: skip
        (coco_folder / f"{stage}.json").write_text(json.dumps(part))
    with pytest.raises(AnnotationError, match=r"test.json: image images/img7.png is also in .*train.json"):
        DetectionDataModule(data_dir=str(coco_folder))
    val = json.loads((coco_folder / "val.json").read_text())
    val["categories"] = [{**c, "name": c["name"].upper()} for c in val["categories"]]
    (coco_folder / "val.json").write_text(json.dumps(val))
    with pytest.raises(AnnotationError, match=r"val.json: its categories differ from those of .*train.json"):
        DetectionDataModule(data_dir=str(coco_folder))


@pytest.mark.parametrize(
    ("xmin", "xmax", "found"),
    [
        ("nan", "20", "not a finite number"),
        ("20", "5", "zero or negative area"),
        ("4", "90", "lies outside"),
        ("48.2", "48.6", "lies outside its image JPEGImages/0.jpg of 48x32 pixels: no part of it is inside"),
    ],
)
def test_a_pascal_voc_box_is_held_to_the_rules_of_a_coco_box(tmp_path, xmin, xmax, found):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "JPEGImages" / "0.jpg")
    box = f"<bndbox><xmin>{xmin}</xmin><ymin>2</ymin><xmax>{xmax}</xmax><ymax>9</ymax></bndbox>"
    (tmp_path / "Annotations" / "0.xml").write_text(
        f"<annotation><filename>0.jpg</filename><object><name>owl</name>{box}</object></annotation>"
    )
    with pytest.raises(AnnotationError, match=rf"0.xml: object 0: box .* {found}"):
        read_voc(tmp_path, ["owl"])


def test_a_box_past_a_wide_images_edges_within_the_tolerance_is_clipped_to_its_width_and_height(tmp_path):
    """An exporter's rounding may put an edge up to a pixel beyond the border: the box kept ends
    on the image's right edge (its width) and bottom edge (its height), here a 48x32 image."""
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "JPEGImages" / "0.jpg")
    box = "<bndbox><xmin>-0.5</xmin><ymin>-0.4</ymin><xmax>48.6</xmax><ymax>32.5</ymax></bndbox>"
    (tmp_path / "Annotations" / "0.xml").write_text(
        f"<annotation><filename>0.jpg</filename><object><name>owl</name>{box}</object></annotation>"
    )
    (record,) = read_voc(tmp_path, ["owl"]).records
    assert record.boxes == [[0.0, 0.0, 48.0, 32.0]] and record.areas == [48.0 * 32.0]


def test_a_voc_difficult_object_is_a_crowd_box(tmp_path):
    """VOC's ``difficult`` objects excuse detections and are not counted as missed, as the VOC
    benchmark scores them: they are read as crowd boxes (COCOeval's ``iscrowd``), the others not."""
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "JPEGImages" / "0.jpg")
    box = "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox>"
    objects = "".join(f"<object><name>owl</name><difficult>{d}</difficult>{box}</object>" for d in ("0", " 1 "))
    (tmp_path / "Annotations" / "0.xml").write_text(f"<annotation><filename>0.jpg</filename>{objects}</annotation>")
    (record,) = read_voc(tmp_path, ["owl"]).records
    assert record.iscrowd == [0, 1]


@pytest.mark.parametrize("name", ["../0.jpg", "/tmp/0.jpg", "C:/data/0.jpg"])
def test_a_pascal_voc_filename_outside_the_data_folder_is_refused_before_it_is_looked_at(tmp_path, name):
    """An annotation's ``<filename>`` through ``..``, absolute or with a drive: the image there
    (which exists) is neither read nor told to exist; the annotation is a bad one naming it."""
    (tmp_path / "data" / "Annotations").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "0.jpg")
    box = "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>9</ymax></bndbox>"
    (tmp_path / "data" / "Annotations" / "0.xml").write_text(
        f"<annotation><filename>{name}</filename><object><name>owl</name>{box}</object></annotation>"
    )
    with pytest.raises(AnnotationError, match=rf"0.xml: image '{name}' lies outside the data folder"):
        read_voc(tmp_path / "data", ["owl"])


def test_a_pascal_voc_image_annotated_by_two_files_is_refused(tmp_path):
    """Two XML files naming one image made it two samples, which the split could send to train
    and test: a COCO file listing a file twice is refused, and so is this."""
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "JPEGImages" / "0.jpg")
    box = "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>9</ymax></bndbox>"
    for name in ("0.xml", "0_copy.xml"):
        (tmp_path / "Annotations" / name).write_text(
            f"<annotation><filename>0.jpg</filename><object><name>owl</name>{box}</object></annotation>"
        )
    message = r"0_copy.xml: image JPEGImages/0.jpg is annotated by 0.xml too; expected one XML file an image"
    for on_error in ("error", "skip"):  # an error either way: which file holds the boxes is not known
        with pytest.raises(AnnotationError, match=message):
            read_voc(tmp_path, ["owl"], on_error)


def make_voc_folder(root, count=12):
    """A Pascal VOC folder of ``count`` images, ids ``2008_0000<i>``, one owl or emu each."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i in range(count):
        image_id = f"2008_{i:06d}"
        Image.fromarray(np.full((32, 48, 3), 40 * (i % 5), np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        box = f"<bndbox><xmin>{1 + i}</xmin><ymin>2</ymin><xmax>{20 + i}</xmax><ymax>19</ymax></bndbox>"
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>"
            f"<object><name>{('owl', 'emu')[i % 2]}</name>{box}</object></annotation>"
        )
    return root


def test_a_pascal_voc_folder_keeps_its_image_sets(tmp_path):
    """VOC's ``ImageSets/Main/train.txt`` and ``val.txt`` (torchvision's ``image_set``) were
    ignored, so official val images were trained on. They are the split, as COCO's split files
    are: val the test split, validation drawn from train. A class's own lists are not splits."""
    voc = make_voc_folder(tmp_path / "VOC2012", count=24)  # the last 12 in no list, as VOC2012's other challenges'
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    ids = [f"2008_{i:06d}" for i in range(12)]
    (voc / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:8]) + "\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[8:]) + "\n")
    (voc / "ImageSets" / "Main" / "owl_train.txt").write_text(f"{ids[8]}  1\n")
    dm = DetectionDataModule(data_dir=str(voc), val_fraction=0.2)
    dm.setup("fit")
    assert sorted(dm.splits["test"]) == [f"JPEGImages/{i}.jpg" for i in ids[8:]]
    assert sorted(dm.splits["train"] + dm.splits["val"]) == [f"JPEGImages/{i}.jpg" for i in ids[:8]]
    assert len(dm.splits["val"]) == 3  # val_fraction of the 12 listed, not of all 24 annotated (4)
    (voc / "ImageSets" / "Main" / "val.txt").write_text(f"{ids[8]}\n{ids[0]}\n")
    with pytest.raises(AnnotationError, match=rf"val.txt line 2: image id '{ids[0]}' is also in train.txt"):
        DetectionDataModule(data_dir=str(voc)).setup("fit")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_999999\n")
    with pytest.raises(AnnotationError, match=r"val.txt line 1: image id '2008_999999' has no Annotations/2008_999999"):
        DetectionDataModule(data_dir=str(voc)).setup("fit")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("../../probe\n")  # whether it exists is not told
    with pytest.raises(AnnotationError, match=r"val.txt line 1: image id '\.\./\.\./probe' names a file outside"):
        DetectionDataModule(data_dir=str(voc)).setup("fit")
    # VOC2007's layout, trainval and test: trainval is the train list
    (voc / "ImageSets" / "Main" / "val.txt").unlink()
    (voc / "ImageSets" / "Main" / "train.txt").rename(voc / "ImageSets" / "Main" / "trainval.txt")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids[8:]) + "\n")
    dm = DetectionDataModule(data_dir=str(voc), val_fraction=0.2)
    dm.setup("fit")
    assert sorted(dm.splits["test"]) == [f"JPEGImages/{i}.jpg" for i in ids[8:]]
    # a test list alone (VOC2007's test download) makes no split: said, and split by seed
    (voc / "ImageSets" / "Main" / "trainval.txt").unlink()
    with pytest.warns(UserWarning, match=r"Main: test.txt make no split \(expected train.txt or trainval.txt with"):
        dm = DetectionDataModule(data_dir=str(voc))
        dm.setup("fit")
    assert len(dm.splits["train"]) + len(dm.splits["val"]) + len(dm.splits["test"]) == 24


def test_a_voc_train_list_of_one_image_is_a_one_line_error(tmp_path):
    """Validation is drawn from the train list: one image there left nothing to train on, and
    scikit-learn's split stopped with its own traceback."""
    voc = make_voc_folder(tmp_path / "voc", count=4)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("2008_000000\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000001\n2008_000002\n")
    with pytest.raises(ConfigError, match=r"the train list holds 1 sample\(s\), too few to draw validation from"):
        DetectionDataModule(data_dir=str(voc)).setup("fit")


def test_a_pascal_voc_list_naming_a_skipped_annotation_leaves_it_out(tmp_path):
    """An id whose XML is bad is left out under ``on_bad_annotation: skip``, from its list too;
    under ``error`` the XML is named."""
    voc = make_voc_folder(tmp_path / "voc", count=12)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    ids = [f"2008_{i:06d}" for i in range(12)]
    (voc / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:8]) + "\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[8:]) + "\n")
    (voc / "Annotations" / f"{ids[9]}.xml").write_text("<annotation><filename>")
    with pytest.raises(AnnotationError, match=rf"{ids[9]}.xml"):
        DetectionDataModule(data_dir=str(voc)).setup("fit")
    with pytest.warns(UserWarning, match=rf"{ids[9]}.xml"):
        dm = DetectionDataModule(data_dir=str(voc), on_bad_annotation="skip")
        dm.setup("fit")
    assert sorted(dm.splits["test"]) == [f"JPEGImages/{i}.jpg" for i in ids[8:] if i != ids[9]]


@pytest.mark.parametrize("layout", ["voc", "coco"])
def test_a_split_list_or_file_holding_no_image_is_refused_naming_it(tmp_path, layout):
    """An empty ``val.txt`` (or a ``val.json`` of no images) gave a split of no image without a
    word: an empty test split, or an empty validation split that logs no ``val/map``."""
    if layout == "voc":
        root = make_voc_folder(tmp_path / "voc", count=12)
        (root / "ImageSets" / "Main").mkdir(parents=True)
        ids = [f"2008_{i:06d}" for i in range(12)]
        (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:8]) + "\n")
        (root / "ImageSets" / "Main" / "val.txt").write_text("\n")
        (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids[8:]) + "\n")
        empty = "val.txt"
    else:
        root = make_coco_folder(tmp_path / "coco")
        doc = json.loads((root / "annotations.json").read_text())
        (root / "annotations.json").rename(root / "train.json")
        (root / "val.json").write_text(json.dumps({**doc, "images": [], "annotations": []}))
        empty = "val.json"
    with pytest.raises(ConfigError, match=rf"{empty}: gives the val split no images; expected one or more"):
        DetectionDataModule(data_dir=str(root)).setup("fit")


def make_official_coco(root, year=2017):
    """COCO as downloaded: ``annotations/instances_train2017.json`` and
    ``instances_val2017.json`` (beside them the captions file the download also holds), images
    in ``train2017/`` and ``val2017/``, each ``file_name`` relative to its split's folder."""
    flat = make_coco_folder(root.parent / f"{root.name}_flat")
    doc = json.loads((flat / "annotations.json").read_text())
    (root / "annotations").mkdir(parents=True)
    for split, indices in (("train", range(0, 9)), ("val", range(9, 12))):
        (root / f"{split}{year}").mkdir()
        part = {**doc, "images": [doc["images"][i] for i in indices]}
        ids = {im["id"] for im in part["images"]}
        part["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
        for im in part["images"]:
            shutil.move(flat / "images" / im["file_name"], root / f"{split}{year}" / im["file_name"])
        (root / "annotations" / f"instances_{split}{year}.json").write_text(json.dumps(part))
        (root / "annotations" / f"captions_{split}{year}.json").write_text(json.dumps({"annotations": []}))
    return root


def test_the_official_coco_layout_trains_evaluates_and_predicts(tmp_path, caplog):
    """COCO 2017 as downloaded, with the default config and --data.data_dir: the official val
    is the test split (COCO's test has no public labels), validation is drawn from train, and
    the checkpoint evaluates and predicts as for any other layout."""
    folder = make_official_coco(tmp_path / "coco")
    with caplog.at_level("INFO"):
        run = fit(tmp_path, "--data.data_dir", str(folder), "--trainer.max_epochs", "1")
    said = [r.getMessage() for r in caplog.records if "instances_val2017.json" in r.getMessage()]
    assert len(said) == 1 and "test split" in said[0] and "drawn from" in said[0]
    splits = json.loads((run / "splits.json").read_text())
    assert sorted(splits["test"]) == [f"val2017/img{i}.png" for i in (10, 11, 9)]
    assert splits["val"] and all(f.startswith("train2017/") for f in splits["train"] + splits["val"])
    assert len(splits["train"]) + len(splits["val"]) == 9
    results = json.loads((run / "evaluation" / "predictions.json").read_text())
    assert {r["image_id"] for r in results} <= {10, 11, 12}  # the val file's own image ids
    assert "test/map" in json.loads((run / "evaluation" / "metrics.json").read_text())
    image = folder / "val2017" / "img9.png"
    main(
        [
            "predict",
            "--ckpt",
            str(run / "checkpoints" / "best.ckpt"),
            "--input",
            str(image),
            "--out",
            str(tmp_path / "p"),
        ]
    )
    (line,) = [json.loads(x) for x in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    assert line["path"] == str(image) and "detections" in line


def test_train_and_val_files_without_a_test_file(coco_folder, caplog):
    """``train.json`` + ``val.json``: val.json is the test split, validation comes from train."""
    doc = json.loads((coco_folder / "annotations.json").read_text())
    for stage, indices in (("train", range(0, 10)), ("val", range(10, 12))):
        part = {**doc, "images": [doc["images"][i] for i in indices]}
        ids = {im["id"] for im in part["images"]}
        part["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
        (coco_folder / f"{stage}.json").write_text(json.dumps(part))
    dm = DetectionDataModule(data_dir=str(coco_folder))
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert sum("val.json" in r.getMessage() for r in caplog.records) == 1
    assert sorted(dm.splits["test"]) == ["images/img10.png", "images/img11.png"]
    assert dm.splits["val"] and sorted(dm.splits["train"] + dm.splits["val"]) == sorted(
        f"images/img{i}.png" for i in range(10)
    )


def test_default_canvases_respect_the_shared_digit_split(tmp_path, monkeypatch):
    """Each split's canvases are drawn only from that split's scans of the digit tasks'
    shared split, so no test digit was seen in training by any digit task."""
    scans, digits = digit_scans()
    split = digit_split()
    rng = np.random.default_rng(0)
    pool = split["test"][:5]
    canvas, boxes, labels = compose_canvas(rng, scans, digits, pool)
    assert canvas.shape == (96, 96) and 2 <= len(boxes) <= 5 and set(labels) <= {int(digits[i]) for i in pool}
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
        assert canvas[int(y1) : int(y2), int(x1) : int(x2)].max() > 150  # the box holds ink

    # write_default hands each split's canvases that split's scans, and only those
    pools = []

    def recording(rng, scans, digits, pool, *args):
        pools.append(sorted(pool))
        return compose_canvas(rng, scans, digits, pool, *args)

    counts = {"train": 6, "val": 2, "test": 3}
    monkeypatch.setattr(detection_data, "compose_canvas", recording)
    monkeypatch.setattr(detection_data, "DEFAULT_CANVASES", counts)
    DetectionDataModule(data_root=str(tmp_path)).write_default(tmp_path)
    expected = [sorted(split[stage]) for stage, count in counts.items() for _ in range(count)]
    assert pools == expected
    assert not set(split["test"]) & set(split["train"])
    written = read_coco(tmp_path / "test.json", tmp_path)
    assert len(written.records) == 3 and all(r.file.startswith("images/test_") for r in written.records)
    for record in written.records:  # COCO's size buckets go by each object's area: its box's here
        assert record.areas == pytest.approx([(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in record.boxes])


def test_fast_dev_run_on_the_embedded_default(tmp_path):
    fit(tmp_path, "--trainer.fast_dev_run", "true")
    default = tmp_path / "data" / "detection2d"
    assert {p.name for p in default.iterdir()} == {"images", "train.json", "val.json", "test.json", "generation.json"}
    test = read_coco(default / "test.json", default)
    assert test.categories.names == [str(d) for d in range(10)] and len(test.records) == 300
    assert all(1 <= len(r.boxes) <= 5 for r in test.records)


def test_fit_evaluate_predictions_and_checkpoint_contract(tmp_path, coco_folder, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in coco_folder.rglob("*")}
    run = fit(
        tmp_path, "--data.data_dir", str(coco_folder), "--data.batch_size", "4", "--trainer.max_epochs", "2",
        "--model.init_args.min_size", "64", "--model.init_args.max_size", "64", "--evaluate", "false",
        "--trainer.log_every_n_steps", "1",
    )  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in coco_folder.rglob("*")} == before, "the user's folder was written to"
    ckpt = run / "checkpoints" / "best.ckpt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert (hparams["num_classes"], hparams["in_channels"], hparams["class_names"]) == (3, 3, ["cat", "dog", "owl"])

    out = tmp_path / "eval"
    # The pictures and predictions.json come from the test pass's detections: the network does not run again.
    calls = watch_network_and_plots(monkeypatch, DetectionModule)
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(coco_folder), "--out", str(out)])
    assert calls[-1] == "plots" and "forward" in calls
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test/map", "test/map_50", "test/map_75"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert all(isinstance(v, float) and v != -1 for v in metrics.values())
    assert set(metrics) & {"test/ap/cat", "test/ap/dog", "test/ap/owl"}
    assert not any(k.endswith(("map_per_class", "classes")) for k in metrics)
    assert {"predictions.png", "predictions.json", "report.md"} <= {p.name for p in out.iterdir()}

    # predictions.json is a COCO results file for the run's own test split: pycocotools scores it
    splits = json.loads((run / "splits.json").read_text())
    results = json.loads((out / "predictions.json").read_text())
    raw = json.loads((coco_folder / "annotations.json").read_text())
    test_ids = {im["id"] for im in raw["images"] if f"images/{im['file_name']}" in splits["test"]}
    assert results and {r["image_id"] for r in results} <= test_ids
    assert {r["category_id"] for r in results} <= {3, 17, 90}
    gt = COCO()
    gt.dataset = {**raw, "images": [im for im in raw["images"] if im["id"] in test_ids],
                  "annotations": [a for a in raw["annotations"] if a["image_id"] in test_ids]}  # fmt: skip
    gt.createIndex()

    def coco_map(results):
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate(), evaluator.accumulate()
        with warnings.catch_warnings():
            evaluator.summarize()
        return evaluator.stats[0]

    assert abs(coco_map(results) - metrics["test/map"]) < 0.02

    # An oracle that predicts the truth must score 1.0 both ways: in test/map (labels
    # 0…K-1 against the dataset's) and in predictions.json scored by pycocotools (labels
    # mapped back to the file's category ids 3, 17, 90). Any slip in either mapping drops it.
    _, datamodule = rebuild(ckpt, data={"data_dir": coco_folder})
    dataset = datamodule.datasets["test"]
    truth = {image.numpy().tobytes(): target for image, target in (dataset[i] for i in range(len(dataset)))}

    def oracle(self, images):
        found = [truth[image.cpu().numpy().tobytes()] for image in images]
        return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in found]

    monkeypatch.setattr(DetectionModule, "forward", oracle)
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(coco_folder), "--out", str(tmp_path / "oracle")])
    assert json.loads((tmp_path / "oracle" / "metrics.json").read_text())["test/map"] == pytest.approx(1.0)
    assert coco_map(json.loads((tmp_path / "oracle" / "predictions.json").read_text())) == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("detector", ["retinanet", "fasterrcnn", *REFERENCES])
def test_other_detectors_train_and_predict(detector):
    model = DetectionModule(num_classes=3, in_channels=1, detector=detector, min_size=64, max_size=64,
                            backbone_kwargs={"channels": [8, 16, 32]}, fpn_channels=32,
                            score_thresh=0.001)  # fmt: skip
    images = [torch.rand(1, 64, 64) for _ in range(2)]  # two: SSDlite's batch norm needs a batch
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([2]),
                "iscrowd": torch.tensor([0]), "image_id": i} for i in range(2)]  # fmt: skip
    if detector != "ssdlite320_mobilenet_v3_large":  # its training step at 320² takes ~10 s on 2 cores
        model.train()
        loss = model.training_step((images, targets), 0)
        loss.backward()
        assert torch.isfinite(loss)
    model.eval()
    out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}
    assert out[0]["labels"].numel() == 0 or 0 <= int(out[0]["labels"].min()) and int(out[0]["labels"].max()) < 3
    # prediction on raw files: RetinaNet through its heads' raw outputs, decoded outside the
    # network; the two-stage detectors through forward, and they refuse export, saying why
    inputs = [Input(Path(f"{i}.png"), image) for i, image in enumerate(images)]
    assert model.predict_inputs(inputs) == [model.describe_detections(d) for d in out]
    if detector == "retinanet":
        assert len(model.inference_network()(model.batch_inputs(images))) == 2 and out[0]["labels"].numel()
    else:
        with pytest.raises(ValueError, match=rf"model.detector='{detector}': only fcos and retinanet can be exported"):
            model.inference_network()


@pytest.mark.parametrize("detector", ["fcos", "fasterrcnn"])
def test_training_leaves_crowd_boxes_out_of_the_detectors_targets(detector, monkeypatch):
    """A crowd box (COCO ``iscrowd``, VOC ``difficult``) only excuses detections when scoring:
    it is no object to learn, so the detector is trained on the other boxes alone, with the
    detector's own labels (Faster R-CNN's shifted past its background class 0)."""
    model = DetectionModule(num_classes=3, in_channels=1, detector=detector, min_size=64, max_size=64)
    seen = []

    def detector_forward(images, targets):
        seen.extend(targets)
        return {"loss": torch.tensor(1.0, requires_grad=True)}

    monkeypatch.setattr(model.detector, "forward", detector_forward)
    boxes = torch.tensor([[4.0, 4.0, 30.0, 30.0], [0.0, 0.0, 60.0, 60.0], [34.0, 8.0, 50.0, 40.0]])
    target = {"boxes": boxes, "labels": torch.tensor([2, 0, 1]), "iscrowd": torch.tensor([0, 1, 0]), "image_id": 1}
    model.training_step(([torch.rand(1, 64, 64)], [target]), 0)
    (trained,) = seen
    assert trained["boxes"].tolist() == boxes[[0, 2]].tolist()
    assert trained["labels"].tolist() == [2 + model.label_offset, 1 + model.label_offset]


def test_fcos_takes_a_batch_of_one_small_image():
    """The default network on 64-px images: its last FPN level (stride 64) is 1x1, where
    GroupNorm(32) over 32 channels had one value per group: a batch of one image failed (and
    with more, that level's features were constant)."""
    config = yaml.safe_load(open(CONFIG))["model"]["init_args"]
    model = DetectionModule(**{**config, "num_classes": 10, "min_size": 64, "max_size": 64})
    model.eval()
    with torch.no_grad():
        assert len(model([torch.rand(1, 64, 64)])) == 1


@pytest.mark.parametrize("detector", ["fcos", "fasterrcnn"])
def test_a_box_clipped_flat_at_an_edge_is_no_detection(detector):
    """FCOS and RetinaNet keep a box clipped to a line along an image's edge (a 5x3 image and
    an 8000x6000 one each gave one, scored 0.39): only boxes with an area are returned, in
    the task's labels (0...K-1, whatever the detector's background convention)."""
    model = DetectionModule(num_classes=2, in_channels=3, detector=detector, min_size=64, max_size=64)
    boxes = torch.tensor([[0.0, 0.0, 5.0, 3.0], [2.2, 3.0, 3.4, 3.0], [4.0, 0.0, 4.0, 2.0]])
    labels = torch.tensor([1, 1, 0]) + model.label_offset
    raw = {"boxes": boxes, "scores": torch.tensor([0.9, 0.39, 0.3]), "labels": labels}
    (own,) = model.own_detections([raw])
    assert own["boxes"].tolist() == [[0.0, 0.0, 5.0, 3.0]] and own["labels"].tolist() == [1]
    assert own["scores"].tolist() == pytest.approx([0.9])


@pytest.mark.parametrize("detector", ["fcos", "retinanet", "fasterrcnn"])
def test_the_thresholds_reach_the_detector_that_applies_them(detector):
    """Faster R-CNN applies them in its ROI heads, the one-stage detectors in themselves; the
    defaults are torchvision's own, so only other values show where they went."""
    model = DetectionModule(num_classes=2, detector=detector, score_thresh=0.3, nms_thresh=0.4, detections_per_img=7)
    applies = getattr(model.detector, "roi_heads", model.detector)
    assert (applies.score_thresh, applies.nms_thresh, applies.detections_per_img) == (0.3, 0.4, 7)


def test_per_class_ap_of_a_class_without_objects_is_not_a_score(monkeypatch):
    """``test/ap/<class>``: a class with objects is scored; one without objects, whether
    detected (false positives only) or not named at all, has no AP (NaN: n/a in metrics.json)."""
    module = DetectionModule(num_classes=3, in_channels=1, class_names=["a", "b", "c"], min_size=64, max_size=64)
    box = torch.tensor([[4.0, 4.0, 30.0, 30.0]])
    target = {"boxes": box, "labels": torch.tensor([0]), "iscrowd": torch.tensor([0]), "area": torch.tensor([676.0]),
              "image_id": 1}  # fmt: skip
    found = {"boxes": torch.cat([box, box + 30]), "labels": torch.tensor([0, 1]), "scores": torch.tensor([0.9, 0.8])}
    monkeypatch.setattr(DetectionModule, "forward", lambda self, images: [found])
    module.on_test_epoch_start()
    module.test_step(([torch.rand(1, 64, 64)], [target]), 0)
    logged = {}
    monkeypatch.setattr(module, "log", lambda key, value, **kwargs: logged.__setitem__(key, float(value)))
    module.on_test_epoch_end()
    assert logged["test/ap/a"] == pytest.approx(1.0)
    assert math.isnan(logged["test/ap/b"]) and math.isnan(logged["test/ap/c"])


def test_pyramid_strides_are_each_levels_own_downsampling():
    """``strides`` size FCOS's points and RetinaNet's anchors and are what export describes:
    each must be the input's side over its level's side, the extra P6/P7 or pool levels too."""
    for extra in ("p6p7", "pool"):
        fpn = BackboneFPN(build_backbone("convnet", 2, 1, channels=[8, 16, 32]), [1, 2], 32, extra)
        levels = fpn(torch.rand(1, 1, 128, 128)).values()
        assert fpn.strides == [128 // level.shape[-1] for level in levels], extra


def test_grad_cam_scores_are_each_classs_best_detection_score():
    """For Grad-CAM, FCOS's class score at a location is sigmoid(class) × sigmoid(centerness)
    (in logs, a sum), and a class's score is that of its best location."""
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0], [1.0, 0.0]]])  # (N, locations, K)
    ctrness = torch.tensor([[[0.0], [-4.0], [2.0]]])

    class Heads(torch.nn.Module):
        names = ("cls_logits", "bbox_regression", "bbox_ctrness")

        def forward(self, images):
            return logits, torch.zeros(1, 3, 4), ctrness

    expected = (torch.nn.functional.logsigmoid(logits) + torch.nn.functional.logsigmoid(ctrness)).amax(dim=1)
    torch.testing.assert_close(DetectionScores(Heads())(torch.rand(1, 1, 8, 8)), expected)


def test_image_mean_or_std_given_is_kept_when_weights_bring_their_own():
    """Pretrained weights' mean/std replace the detector's defaults, but not a user's
    ``image_mean`` or ``image_std``, even one given alone."""
    model = DetectionModule(in_channels=1, image_mean=[0.3])
    said = model.renormalise_input([0.1], [0.2])
    assert (model.detector.transform.image_mean, model.detector.transform.image_std) == ([0.3], [0.25])
    assert "not applied" in said


def test_bad_model_values_name_the_key():
    with pytest.raises(ValueError, match="model.detector"):
        DetectionModule(detector="yolo")
    with pytest.raises(ValueError, match="model.image_mean"):
        DetectionModule(in_channels=1, image_mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="model.fpn_stages"):
        DetectionModule(fpn_stages=[7])
    with pytest.raises(ValueError, match="model.fpn_channels"):
        DetectionModule(fpn_channels=48)


def test_predictions_on_files_of_different_sizes_are_forwards(trained, tmp_path):
    """Raw files read by read_input, batched by the detector's transform, run through the
    heads and decoded outside them give what forward (evaluation's path) gives the same
    images in one batch: boxes in each image's own pixels."""
    ckpt, folder = trained
    model, datamodule = rebuild_for_inference(ckpt)
    paths = images_of_sizes(folder, tmp_path, [(64, 64), (90, 40), (50, 96)])
    inputs = [datamodule.read_input(p) for p in paths]
    assert [item.meta for item in inputs] == [{"width": 64, "height": 64}, {"width": 90, "height": 40},
                                              {"width": 50, "height": 96}]  # fmt: skip
    predictions = model.predict_inputs(inputs)
    with torch.no_grad():
        expected = model([item.sample for item in inputs])
    for prediction, item, truth in zip(predictions, inputs, expected, strict=True):
        boxes, scores, classes = as_tensors(prediction)
        assert scores.tolist() == sorted(scores.tolist(), reverse=True)
        assert classes == [model.class_names[label] for label in truth["labels"].tolist()]
        torch.testing.assert_close(boxes, truth["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(scores, truth["scores"], atol=1e-4, rtol=0)
        assert all(boxes[:, 2] <= item.meta["width"]) and all(boxes[:, 3] <= item.meta["height"])
    # a short run finds boxes in the square image (the tall one's only in its padding, dropped)
    assert predictions[0]["detections"]


def test_predict_a_file_and_a_folder_with_a_bad_image(trained, tmp_path, capsys):
    ckpt, folder = trained
    image = folder / "images" / "img0.png"
    main(["predict", "--ckpt", str(ckpt), "--input", str(image), "--out", str(tmp_path / "one")])
    (line,) = [json.loads(x) for x in (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()]
    assert line["path"] == str(image) and line["detections"]
    assert set(line["detections"][0]) == {"class", "score", "box"} and line["detections"][0]["class"] in CATEGORY_NAMES
    assert [p.name for p in (tmp_path / "one" / "pictures").iterdir()] == ["img0.png"]
    assert "predicted 1 of 1 inputs" in capsys.readouterr().out

    inputs = tmp_path / "inputs"
    images_of_sizes(folder, inputs, [(64, 64), (80, 48)])
    shutil.copy(image, inputs / "c.png")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (3000, 20)).save(inputs / "strip.png")  # 64x0 after the detector's resize
    out = tmp_path / "folder"
    main(["predict", "--ckpt", str(ckpt), "--input", str(inputs), "--out", str(out)])
    lines = {Path(x["path"]).name: x for x in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert sorted(lines) == ["broken.png", "c.png", "resized0.png", "resized1.png", "strip.png"]
    assert set(lines["broken.png"]) == {"path", "error"} and "broken.png" in lines["broken.png"]["error"]
    said = "strip.png: 3000x20 pixels, resized to under one pixel across by model.min_size 64 and model.max_size 64"
    assert lines["strip.png"]["error"].endswith(f"{said}; expected sides at most 64:1 apart")
    alone, batched = as_tensors(line), as_tensors(lines["c.png"])  # the same file, in a batch of others
    assert batched[2] == alone[2]
    torch.testing.assert_close(batched[:2], alone[:2], atol=1e-4, rtol=0)
    assert {p.name for p in (out / "pictures").iterdir()} == {"c.png", "resized0.png", "resized1.png"}
    printed = capsys.readouterr().out
    assert "predicted 3 of 5 inputs; 2 could not be read" in printed and "broken.png" in printed


def test_evaluating_images_without_objects_is_one_line_not_an_empty_metrics_file(trained, tmp_path, capsys):
    """Other data whose images have no annotated object has nothing for mAP to score: evaluate
    wrote ``metrics.json`` as ``{}`` without a word."""
    ckpt, folder = trained
    empty = shutil.copytree(folder, tmp_path / "background")
    doc = json.loads((empty / "annotations.json").read_text())
    (empty / "annotations.json").write_text(json.dumps({**doc, "annotations": []}))
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(empty), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert f"cnnsuite evaluate: error: {empty}: the test images hold no annotated object, so mAP has nothing to" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_coco_file_of_other_ids_lacking_a_category_is_scored_by_name(trained, tmp_path):
    """Test images annotated without the model's ``cat`` and with ``owl`` under id 5: labelled by
    name, in the model's order; the results file keeps the file's ids, ``cat`` one it never uses."""
    ckpt, folder = trained
    other = shutil.copytree(folder, tmp_path / "no_cat")
    doc = json.loads((other / "annotations.json").read_text())
    ids = {3: None, 17: 17, 90: 5}
    doc["categories"] = [{"id": 17, "name": "dog"}, {"id": 5, "name": "owl"}]
    kept = [a for a in doc["annotations"] if ids[a["category_id"]]]
    doc["annotations"] = [{**a, "category_id": ids[a["category_id"]]} for a in kept]
    (other / "annotations.json").write_text(json.dumps(doc))
    _, datamodule = rebuild(ckpt, None, {"data_dir": str(other)})
    assert datamodule.class_names == ["cat", "dog", "owl"] and datamodule.categories.ids == [18, 17, 5]
    datamodule.setup("test")
    dataset, names = datamodule.datasets["test"], {17: "dog", 5: "owl"}
    for index in range(len(dataset)):
        record = dataset.records[dataset.ids[index]]
        truth = [names[a["category_id"]] for a in doc["annotations"] if a["image_id"] == record.image_id]
        assert [datamodule.class_names[label] for label in dataset[index][1]["labels"].tolist()] == truth
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(other), "--out", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert results and {r["category_id"] for r in results} <= {18, 17, 5}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/map"] <= 1.0 and metrics["test/ap/cat"] is None  # no cat to score: n/a


def test_predict_agrees_with_evaluate_on_the_test_split(trained, tmp_path):
    """The test split's files, read and predicted as raw files, score the mAP evaluate gave."""
    ckpt, folder = trained
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(tmp_path)])
    reported = json.loads((tmp_path / "metrics.json").read_text())["test/map"]
    _, datamodule = rebuild(ckpt, data={"data_dir": folder})
    test = datamodule.datasets["test"]
    predictor = Predictor(ckpt, accelerator="cpu")
    predictions = predictor.predict([predictor.read(datamodule.root / sample_id) for sample_id in test.ids])
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    index = {name: i for i, name in enumerate(predictor.model.class_names)}
    for prediction, (_, target) in zip(predictions, (test[i] for i in range(len(test))), strict=True):
        boxes, scores, classes = as_tensors(prediction)
        found = {"boxes": boxes, "scores": scores, "labels": torch.tensor([index[c] for c in classes])}
        metric.update([found], [{k: target[k] for k in ("boxes", "labels", "iscrowd")}])
    assert abs(float(metric.compute()["map"]) - reported) < 1e-6


def test_onnx_export_of_the_heads_predicts_as_torch(trained, tmp_path):
    """``cnnsuite export``'s network (backbone, FPN, heads; batch, height and width free) gives
    the same detections under ONNX Runtime as PyTorch, through the same describe_outputs, on
    batches other than the traced one: another size, and one image alone, wider than tall,
    that pads to another shape."""
    ckpt, folder = trained
    files = images_of_sizes(folder, tmp_path, [(64, 64), (96, 60), (40, 70)])
    path, info = export(ckpt, "onnx", tmp_path / "heads.onnx", inputs=files)
    assert [o["name"] for o in info["outputs"]] == ["cls_logits", "bbox_regression", "bbox_ctrness"]
    assert info["input"]["shape"] == ["batch", 3, "free", "free"]
    assert "multiple of 32" in info["preprocessing"]["batch"] and max(info["check"]["max_abs_diff"].values()) < 1e-4
    onnx_network = OnnxNetwork(path)
    predictor = Predictor(ckpt, "cpu")
    inputs = [predictor.read(p) for p in files]
    for some in (inputs, inputs[:1], inputs[1:2]):
        assert predictor.model.batch_inputs([item.sample for item in some]).shape[0] == len(some)
        by_torch, by_onnx = predictor.predict(some), predictor.predict(some, network=onnx_network)
        for t, o in zip(by_torch, by_onnx, strict=True):
            (t_boxes, t_scores, t_classes), (o_boxes, o_scores, o_classes) = as_tensors(t), as_tensors(o)
            assert o_classes == t_classes and t_classes
            torch.testing.assert_close(o_boxes, t_boxes, atol=1e-3, rtol=0)
            torch.testing.assert_close(o_scores, t_scores, atol=1e-4, rtol=0)


def test_an_image_declared_smaller_than_it_is_named_for_its_size_not_its_boxes(tmp_path):
    """An entry's width and height set too small put its boxes outside it: the file's own size
    is the mistake to name (once), not each box (as when the size is declared too large)."""
    path = write_bad(make_coco_folder(tmp_path / "c"), lambda d: d["images"][0].update(width=20, height=20))
    with pytest.raises(AnnotationError) as err:
        read_coco(path)
    message = str(err.value)
    assert "images/img0.png: image id 1 is 64x64 pixels but its annotation says 20x20" in message
    assert message.count("img0.png") == 1 and "outside" not in message
    # a Pascal VOC XML's <size> alike
    from test_localization2d import write_voc

    voc = write_voc(tmp_path / "voc", [2, 1])
    xml = voc / "Annotations" / "0.xml"
    size = "<width>48</width><height>32</height>"
    xml.write_text(xml.read_text().replace(size, "<width>10</width><height>10</height>"))
    with pytest.raises(AnnotationError) as err:
        read_voc(voc, ["bird", "cat"], "error")
    assert str(err.value).endswith(f"JPEGImages/0.jpg is 48x32 pixels but the <size> in {xml} says 10x10")


@pytest.mark.parametrize("size", ["<size><width>0</width><height>0</height><depth>3</depth></size>", "<size/>", ""])
def test_a_pascal_voc_size_of_zero_is_read_from_the_image_as_one_left_out(tmp_path, size):
    """Exporters that do not know an image's size write ``<width>0</width>``: as a COCO
    width/height of 0 or left out, the size is the image's own, not a size that stops the run."""
    make_voc_folder(tmp_path, count=1)
    xml = tmp_path / "Annotations" / "2008_000000.xml"
    xml.write_text(xml.read_text().replace("<object>", f"{size}<object>"))
    (record,) = read_voc(tmp_path, ["emu", "owl"]).records
    assert (record.width, record.height) == (48, 32) and record.boxes == [[1.0, 2.0, 20.0, 19.0]]


def test_a_pascal_voc_size_that_is_not_the_images_names_its_xml_file(tmp_path):
    """A VOC image has no id of its own: the message names the XML file whose ``<size>`` is wrong."""
    make_voc_folder(tmp_path, count=1)
    xml = tmp_path / "Annotations" / "2008_000000.xml"
    xml.write_text(xml.read_text().replace("<object>", "<size><width>96</width><height>32</height></size><object>"))
    dm = DetectionDataModule(data_dir=str(tmp_path))
    said = str(dm.find_bad(["JPEGImages/2008_000000.jpg"], decode=False)["JPEGImages/2008_000000.jpg"])
    assert "image id" not in said
    assert "2008_000000.jpg is 48x32 pixels but the <size> in " in said and "2008_000000.xml says 96x32" in said


def test_a_size_turned_a_quarter_says_the_exif_orientation_may_be_why(tmp_path):
    """Tools that ignore EXIF label a phone photo as stored: its annotation gives the stored
    size, which is the upright size turned; the message says so, as the file's own size alone
    (what most viewers show) would puzzle."""
    folder = make_coco_folder(tmp_path / "c")
    photo = Image.open(folder / "images" / "img0.png").convert("RGB").resize((64, 48))  # stored 64x48
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: upright 48x64
    photo.save(folder / "images" / "img0.jpg", exif=exif.tobytes())

    def as_stored(doc):
        doc["images"][0].update(file_name="img0.jpg", width=64, height=48)
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 1]

    write_bad(folder, as_stored)
    said = str(DetectionDataModule(data_dir=str(folder)).find_bad(["images/img0.jpg"], decode=False)["images/img0.jpg"])
    assert "is 48x64 pixels but its annotation says 64x48" in said and "EXIF orientation" in said
