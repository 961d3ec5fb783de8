"""localization2d: the readers (CSV, CUB, COCO/VOC), boxes under transforms, losses and
metrics against hand-computed values, bad files, a fit and the evaluation of its checkpoint."""

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
from cnnsuite.tasks.localization2d import datamodule as loc_data
from cnnsuite.tasks.localization2d.datamodule import BoxTransform, LocalizationDataModule
from cnnsuite.tasks.localization2d.module import (
    CropClassifierHead,
    LocalizationAccuracy,
    LocalizationModule,
    MeanIoU,
    decode_boxes,
)
from conftest import fit as run_fit
from conftest import watch_network_and_plots
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from cnnsuite.cli import main
from cnnsuite.data import BadFileError
from cnnsuite.data.augment import BatchBoxAffine
from cnnsuite.data.digits import digit_split
from cnnsuite.errors import ConfigError
from cnnsuite.trust.checkpoint import rebuild, rebuild_for_inference
from cnnsuite.use.predict import Predictor

CLASSES = ("cat", "dog")


def make_csv_folder(root, count=16, seed=0):
    """A tiny ``labels.csv`` folder: one bright rectangle per image (cat: filled, dog: a
    frame) on noise; images of different sizes, RGB and gray, PNG and JPEG."""
    rng = np.random.default_rng(seed)
    (root / "pics").mkdir(parents=True)
    rows = ["image,label,x1,y1,x2,y2"]
    for i in range(count):
        h, w = (int(v) for v in rng.integers(40, 64, size=2))
        image = rng.integers(0, 50, size=(h, w, 3), dtype=np.uint8)
        bw, bh = (int(v) for v in rng.integers(12, 24, size=2))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        image[y : y + bh, x : x + bw] = 230
        if i % 2:
            image[y + 3 : y + bh - 3, x + 3 : x + bw - 3] = 20
        name = f"pics/{i}.{'jpg' if i % 4 == 3 else 'png'}"
        pil = Image.fromarray(image)
        (pil.convert("L") if i % 3 == 1 else pil).save(root / name)
        rows.append(f"{name},{CLASSES[i % 2]},{x},{y},{x + bw},{y + bh}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def csv_folder(tmp_path):
    return make_csv_folder(tmp_path / "user")


def rectangle_image(h, w, box):
    image = torch.zeros(1, h, w, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 255
    return image


def bright_box(image):
    """The box (fractions of the image) of the pixels above mid-grey."""
    ys, xs = torch.nonzero(image[0] > image.min() + 0.5 * (image.max() - image.min()), as_tuple=True)
    h, w = image.shape[-2:]
    return torch.tensor([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])


# --- readers ------------------------------------------------------------------------------


def test_csv_reader(csv_folder):
    dm = LocalizationDataModule(data_dir=str(csv_folder))
    assert (dm.class_names, dm.in_channels, dm.input_shape) == (["cat", "dog"], 3, (3, 64, 64))
    samples = dict(dm.list_samples())
    assert len(samples) == 16 and samples["pics/1.png"] == 1
    first = dm._load()["pics/0.png"]
    row = (csv_folder / "labels.csv").read_text().splitlines()[1].split(",")
    assert first.box == tuple(float(v) for v in row[2:]) and first.where.endswith("labels.csv line 2")


def make_cub_folder(root):
    """CUB-200-2011's layout, two classes, four images each; ids 1-3 and 5-7 are train."""
    (root / "images").mkdir(parents=True)
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    lines = {"images.txt": [], "image_class_labels.txt": [], "bounding_boxes.txt": [], "train_test_split.txt": []}
    for i in range(8):
        image_id, cls = i + 1, classes[i // 4]
        (root / "images" / cls).mkdir(exist_ok=True)
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(root / "images" / cls / f"bird_{i}.jpg")
        lines["images.txt"].append(f"{image_id} {cls}/bird_{i}.jpg")
        lines["image_class_labels.txt"].append(f"{image_id} {i // 4 + 1}")
        lines["bounding_boxes.txt"].append(f"{image_id} {i}.0 2.0 20.5 15.0")
        lines["train_test_split.txt"].append(f"{image_id} {int(i % 4 != 3)}")
    (root / "classes.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(classes)))
    for name, content in lines.items():
        (root / name).write_text("\n".join(content) + "\n")
    return root


def test_cub_reader_keeps_its_split(tmp_path):
    root = make_cub_folder(tmp_path / "CUB_200_2011")
    dm = LocalizationDataModule(data_dir=str(root), val_fraction=0.25)
    assert dm.format == "cub" and dm.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    sample = dm._load()["images/002.Laysan_Albatross/bird_5.jpg"]
    assert (sample.label, sample.box) == (1, (5.0, 2.0, 25.5, 17.0))  # x, y, width, height → x1 y1 x2 y2
    dm.setup("fit")
    assert sorted(dm.splits["test"]) == sorted(
        f"images/{c}/bird_{i}.jpg" for c, i in (("001.Black_footed_Albatross", 3), ("002.Laysan_Albatross", 7))
    )
    assert len(dm.splits["val"]) == 2 and len(dm.splits["train"]) == 4
    assert not set(dm.splits["val"]) & set(dm.splits["train"])


def test_cub_classes_are_ordered_by_their_ids_not_their_lines(tmp_path):
    root = make_cub_folder(tmp_path / "CUB_200_2011")
    (root / "classes.txt").write_text("2 002.Laysan_Albatross\n1 001.Black_footed_Albatross\n")
    dm = LocalizationDataModule(data_dir=str(root))
    assert dm.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert dm._load()["images/002.Laysan_Albatross/bird_5.jpg"].label == 1


def test_cub_bad_rows_are_named_not_read(tmp_path):
    """A box without area, a class missing from classes.txt: bad rows named all at once; a line
    of more fields than its file's is malformed, not read by its first ones."""
    root = make_cub_folder(tmp_path / "CUB_200_2011")
    boxes = (root / "bounding_boxes.txt").read_text().replace("2 1.0 2.0 20.5 15.0", "2 1.0 2.0 0.0 15.0")
    (root / "bounding_boxes.txt").write_text(boxes)
    (root / "image_class_labels.txt").write_text((root / "image_class_labels.txt").read_text().replace("3 1", "3 9"))
    with pytest.raises(BadFileError) as err:
        LocalizationDataModule(data_dir=str(root))
    assert "line 2 (image id 2): box" in str(err.value) and "zero or negative area" in str(err.value)
    assert "line 3 (image id 3): its class in image_class_labels.txt is missing or not in classes.txt" in str(err.value)
    (root / "images.txt").write_text((root / "images.txt").read_text().replace("bird_0.jpg", "bird_0.jpg extra"))
    with pytest.raises(ConfigError, match=r"images.txt line 1: expected 2 fields"):
        LocalizationDataModule(data_dir=str(root))


def test_a_cub_class_id_that_is_no_integer_is_named_in_one_line(tmp_path):
    root = make_cub_folder(tmp_path / "CUB_200_2011")
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\nx 002.Laysan_Albatross\n")
    with pytest.raises(ConfigError, match=r"classes.txt line 2: expected an integer id first, got 'x 002.Laysan"):
        LocalizationDataModule(data_dir=str(root))


def test_a_cub_image_outside_its_images_folder_is_refused_before_it_is_looked_at(tmp_path):
    """images.txt naming ``../../secret.jpg``: the row is a bad one named for it, as a COCO
    ``file_name`` outside the folder is, before the file is opened or its existence told."""
    root = make_cub_folder(tmp_path / "CUB_200_2011")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "secret.jpg")
    images = (root / "images.txt").read_text().replace("1 001.Black_footed_Albatross/bird_0.jpg", "1 ../../secret.jpg")
    (root / "images.txt").write_text(images)
    message = r"line 1 \(image id 1\): image '\.\./\.\./secret\.jpg' lies outside the images folder; expected a path"
    with pytest.raises(BadFileError, match=message):
        LocalizationDataModule(data_dir=str(root))


def write_coco(root, boxes_per_image):
    (root / "images").mkdir(parents=True)
    doc = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "owl"}, {"id": 3, "name": "cat"}]}
    ann = 1
    for i, count in enumerate(boxes_per_image):
        Image.fromarray(np.zeros((32, 48), np.uint8)).save(root / "images" / f"{i}.png")
        doc["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 32})
        for k in range(count):
            doc["annotations"].append(
                {"id": ann, "image_id": i + 1, "category_id": (3, 7)[i % 2], "bbox": [2 + k, 3, 10, 12], "iscrowd": 0}
            )
            ann += 1
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def write_voc(root, objects_per_image):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i, count in enumerate(objects_per_image):
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        objects = "".join(
            f"<object><name>{('bird', 'cat')[i % 2]}</name><bndbox><xmin>{4 + k}</xmin><ymin>5</ymin>"
            f"<xmax>20</xmax><ymax>25</ymax></bndbox></object>"
            for k in range(count)
        )
        (root / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>48</width><height>32</height></size>"
            f"{objects}</annotation>"
        )
    return root


def write_image_sets(root, **lists):
    """``ImageSets/Main/<name>.txt`` of ``root``, one id a line, by name."""
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for name, ids in lists.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))


def voc_split(dm):
    """The split ``dm`` builds, as the VOC ids of each stage."""
    dm.setup("fit")
    return {stage: sorted(i.removeprefix("JPEGImages/").removesuffix(".jpg") for i in dm.splits[stage])
            for stage in ("train", "val", "test")}  # fmt: skip


def test_a_voc_folder_keeps_its_image_sets(tmp_path):
    """VOC's ``ImageSets/Main`` lists were ignored, so an official val image could be trained
    on: they are the split, as detection2d's (one code path): val the test split where there
    is no test list, validation drawn from the listed train images only."""
    voc = write_voc(tmp_path / "voc", [1] * 20)  # 12 to 19 in no list: left out
    write_image_sets(voc, train=range(8), val=range(8, 12), cat_train=[8])  # a class's list is no split
    split = voc_split(LocalizationDataModule(data_dir=str(voc), val_fraction=0.2))
    assert split["test"] == ["10", "11", "8", "9"]
    assert sorted(split["train"] + split["val"]) == [str(i) for i in range(8)]
    assert len(split["val"]) == 3  # val_fraction of the 12 listed, not of the 20 annotated (4)
    # all three lists: each is its split
    write_image_sets(voc, train=range(6), val=[6, 7], test=range(8, 12))
    assert voc_split(LocalizationDataModule(data_dir=str(voc))) == {
        "train": [str(i) for i in range(6)], "val": ["6", "7"], "test": ["10", "11", "8", "9"]}  # fmt: skip
    # VOC2007's layout: trainval and test, trainval the train list
    for name in ("train", "val"):
        (voc / "ImageSets" / "Main" / f"{name}.txt").unlink()
    write_image_sets(voc, trainval=range(8), test=range(8, 12))
    split = voc_split(LocalizationDataModule(data_dir=str(voc), val_fraction=0.2))
    assert split["test"] == ["10", "11", "8", "9"] and len(split["val"]) == 3
    assert sorted(split["train"] + split["val"]) == [str(i) for i in range(8)]
    # a split file still takes precedence
    listed = {"train": [f"JPEGImages/{i}.jpg" for i in range(10)], "val": ["JPEGImages/10.jpg"]}
    (tmp_path / "split.json").write_text(json.dumps({**listed, "test": ["JPEGImages/11.jpg"]}))
    split = voc_split(LocalizationDataModule(data_dir=str(voc), split_file=str(tmp_path / "split.json")))
    assert (split["val"], split["test"]) == (["10"], ["11"])
    # a test list alone (VOC2007's test download) makes no split: said, and split by seed
    (voc / "ImageSets" / "Main" / "trainval.txt").unlink()
    with pytest.warns(UserWarning, match=r"Main: test.txt make no split \(expected train.txt or trainval.txt with"):
        split = voc_split(LocalizationDataModule(data_dir=str(voc)))
    assert sum(len(ids) for ids in split.values()) == 20


def test_a_voc_folders_bad_image_sets_are_one_line_errors(tmp_path):
    """Ids in two lists, ids with no XML and ids through ``..`` are refused naming the list
    and line; an image skipped for its two boxes stays out of its list."""
    voc = write_voc(tmp_path / "voc", [1, 1, 1, 1, 2, 1])
    main_dir = voc / "ImageSets" / "Main"
    for lists, said in (
        ({"train": [0, 1, 2], "val": [3, 0]}, r"val.txt line 2: image id '0' is also in train.txt"),
        ({"train": [0, 1, 2], "val": ["9"]}, r"val.txt line 1: image id '9' has no Annotations/9.xml"),
        ({"train": [0, 1, 2], "val": ["../../probe"]}, r"val.txt line 1: image id '\.\./\.\./probe' names a file"),
        ({"train": [0], "test": [3]}, r"the train list holds 1 sample\(s\), too few to draw validation from; give"),
        ({"train": [0, 1, 2], "val": [4], "test": [3]}, r"val.txt: gives the val split no images; expected one"),
    ):  # fmt: skip
        shutil.rmtree(main_dir, ignore_errors=True)
        write_image_sets(voc, **lists)
        with pytest.raises(ConfigError, match=said) as err:
            LocalizationDataModule(data_dir=str(voc), on_bad_file="skip").setup("fit")
        assert "\n" not in str(err.value)
    shutil.rmtree(main_dir)
    write_image_sets(voc, train=[0, 1, 2, 4], val=[3, 5])  # 4 holds two boxes
    with pytest.warns(UserWarning, match=r"4.jpg: 2 boxes"):
        split = voc_split(LocalizationDataModule(data_dir=str(voc), on_bad_file="skip", val_fraction=0.3))
    assert split["test"] == ["3", "5"] and sorted(split["train"] + split["val"]) == ["0", "1", "2"]


def test_coco_and_voc_folders_with_one_box_per_image(tmp_path):
    coco = LocalizationDataModule(data_dir=str(write_coco(tmp_path / "coco", [1, 1, 1, 1])))
    assert coco.format == "coco" and coco.class_names == ["cat", "owl"]  # sorted by category id
    sample = coco._load()["images/1.png"]
    assert (sample.label, sample.box) == (1, (2.0, 3.0, 12.0, 15.0))
    voc = LocalizationDataModule(data_dir=str(write_voc(tmp_path / "voc", [1, 1, 1])))
    assert voc.format == "voc" and voc.class_names == ["bird", "cat"]
    assert voc._load()["JPEGImages/1.jpg"].box == (4.0, 5.0, 20.0, 25.0)
    # a labels.csv beside the COCO file: which to read is the user's word, not the first found
    (tmp_path / "coco" / "labels.csv").write_text("image,label,x1,y1,x2,y2\n")
    with pytest.raises(ValueError, match=r"holds labels.csv and annotations.json \(COCO\); name the one to read "
                                         r"with --data.format csv or coco"):  # fmt: skip
        LocalizationDataModule(data_dir=str(tmp_path / "coco"))
    assert LocalizationDataModule(data_dir=str(tmp_path / "coco"), format="coco").class_names == ["cat", "owl"]

    with pytest.raises(BadFileError) as err:
        LocalizationDataModule(data_dir=str(write_coco(tmp_path / "coco2", [1, 2, 1, 3, 0])))
    message = str(err.value)
    assert "3 of 5" in message and "images/1.png" in message and "images/3.png" in message
    assert "2 boxes (annotations [2, 3]) where one is expected" in message
    assert "image images/4.png (id 5): 0 boxes where one is expected" in message  # none is no box either
    said = r"Annotations/2\.xml: image JPEGImages/2\.jpg: 2 boxes \(objects \[0, 1\]\)"
    with pytest.raises(BadFileError, match=said):
        LocalizationDataModule(data_dir=str(write_voc(tmp_path / "voc2", [1, 1, 2])))


def test_bad_rows_and_files_are_all_named(csv_folder):
    lines = (csv_folder / "labels.csv").read_text().splitlines()
    lines[2] = "pics/1.png,dog,30,5,10,20"  # line 3: x2 <= x1
    lines[3] = "pics/nothing.png,cat,1,1,5,5"  # line 4: no such image
    lines.append(lines[5].replace(",1", ",2", 1))  # line 18: a second box for line 6's image
    lines[6] = "pics/5.png,dog,10,10,500,20"  # line 7: a good row, its box beyond the image's border
    (csv_folder / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BadFileError) as err:
        LocalizationDataModule(data_dir=str(csv_folder))
    message = str(err.value)
    assert "4 of 16 labelled images" in message  # 16 distinct images in 17 rows
    assert "line 3: box (30, 5, 10, 20) has zero or negative area (x2 <= x1" in message
    assert "line 4: image 'pics/nothing.png' does not exist" in message
    assert "pics/4.png: 2 boxes" in message and "line 6" in message and "line 18" in message
    assert "line 7: box (10, 10, 500, 20) lies outside its image pics/5.png" in message
    lines[6] = lines[6].replace(",500,", ",20,")
    (csv_folder / "labels.csv").write_text("\n".join(lines) + "\n")

    with pytest.warns(UserWarning, match="skipping 3 of 16") as caught:
        dm = LocalizationDataModule(data_dir=str(csv_folder), on_bad_file="skip")
    assert "line 3" in str(caught[0].message)
    assert len(dm.list_samples()) == 13


def test_a_csv_image_outside_the_folder_is_refused_before_it_is_looked_at(csv_folder):
    """``../secret.png`` in labels.csv is a bad row, as in CUB's images.txt, though the file exists."""
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(csv_folder.parent / "secret.png")
    lines = (csv_folder / "labels.csv").read_text().splitlines()
    lines[2] = "../secret.png,dog,1,1,5,5"
    (csv_folder / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BadFileError, match=r"line 3: image '\.\./secret\.png' lies outside the data folder"):
        LocalizationDataModule(data_dir=str(csv_folder))


def test_a_row_without_a_label_is_named_not_a_traceback(csv_folder):
    """An empty label cell is a bad row like a bad box, not a ValueError from the class lookup."""
    lines = (csv_folder / "labels.csv").read_text().splitlines()
    lines[2] = "pics/1.png,,1,1,5,5"
    (csv_folder / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BadFileError, match=r"labels.csv line 3: empty label"):
        LocalizationDataModule(data_dir=str(csv_folder))
    (csv_folder / "labels.csv").write_text("image,label,x1,y1,x2,y2\n")
    with pytest.raises(ConfigError, match=r"labels.csv: no rows"):
        LocalizationDataModule(data_dir=str(csv_folder))


def test_corrupt_image_and_box_outside_are_named_before_training(csv_folder):
    (csv_folder / "pics" / "2.png").write_bytes(b"not a png")
    lines = (csv_folder / "labels.csv").read_text().splitlines()
    lines[6] = "pics/5.png,dog,10,10,500,20"  # line 7: beyond the right border
    (csv_folder / "labels.csv").write_text("\n".join(lines) + "\n")
    dm = LocalizationDataModule(data_dir=str(csv_folder))
    with pytest.raises(BadFileError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "2 of 16 images" in message and "2.png: cannot decode" in message
    assert "line 7: box (10, 10, 500, 20) lies outside its image pics/5.png" in message

    dm = LocalizationDataModule(data_dir=str(csv_folder), on_bad_file="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")  # one warning before training, naming both
        kept = sum(len(dm.datasets[s]) for s in ("train", "val", "test"))
    (said,) = [str(w.message) for w in caught if "skipping" in str(w.message)]
    assert kept == 14 and "line 7" in said and "2.png" in said


def test_the_check_before_training_opens_each_image_once(csv_folder, monkeypatch):
    """The header that says an image reads also gives the size its box is checked against."""
    from cnnsuite.data import images

    dm = LocalizationDataModule(data_dir=str(csv_folder))
    opened = []
    open_image = images.open_image
    monkeypatch.setattr(images, "open_image", lambda path: opened.append(path) or open_image(path))
    dm.setup("fit")
    assert len(opened) == len(set(opened)) == 16


# --- boxes under transforms -------------------------------------------------------------------


def test_boxes_follow_the_resize():
    box = (16, 4, 40, 20)
    image = rectangle_image(32, 64, box)
    # Half size on both axes: every edge stays on a whole pixel, so the pixels can be checked.
    finish = v2.Compose([v2.Resize((16, 32), antialias=False), v2.ToDtype(torch.float32, scale=True)])
    out, out_box = (t[0] for t in BoxTransform(finish)(image[None], torch.tensor([box], dtype=torch.float32)))
    assert out.shape == (1, 16, 32)
    torch.testing.assert_close(out_box, torch.tensor([16 / 64, 4 / 32, 40 / 64, 20 / 32]))
    torch.testing.assert_close(bright_box(out), out_box)


def test_boxes_follow_the_batch_moves_and_flips():
    images = torch.zeros(16, 1, 32, 32)
    images[:, :, 10:20, 6:18] = 1.0  # rows y 10..20, columns x 6..18
    boxes = torch.tensor([[6.0, 10.0, 18.0, 20.0]]).repeat(16, 1)
    torch.manual_seed(0)
    moved_images, moved = BatchBoxAffine(0.2, (0.8, 1.2), hflip=True)(images, boxes)
    assert len({tuple(box.tolist()) for box in moved}) == 16  # one draw per sample
    for image, box in zip(moved_images, moved, strict=True):
        torch.testing.assert_close(bright_box(image) * 32, box, atol=1.5, rtol=0)


def test_a_box_moved_partly_out_of_the_image_is_cut_at_its_edges():
    """A move may take part of a box past the border (up to ``1 - min_visible`` of it): the box
    trained on is the part the moved image shows, not corners beyond the image."""
    images = torch.zeros(16, 1, 32, 32)
    images[:, :, 2:12, 20:30] = 1.0  # near the top right corner
    boxes = torch.tensor([[20.0, 2.0, 30.0, 12.0]]).repeat(16, 1)
    torch.manual_seed(0)
    moved_images, moved = BatchBoxAffine(0.3, (1.0, 1.0), hflip=False, min_visible=0.3)(images, boxes)
    assert moved.min() >= 0 and moved.max() <= 32
    assert (moved[:, 2] == 32).any() and (moved[:, 1] == 0).any()  # some were cut at the right, some at the top
    for image, box in zip(moved_images, moved, strict=True):
        torch.testing.assert_close(bright_box(image) * 32, box, atol=1.5, rtol=0)


def test_a_move_that_loses_the_box_is_not_applied():
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, 0:6, 0:6] = 1.0  # in the corner: a 4x zoom on the centre leaves nothing of it
    boxes = torch.tensor([[0.0, 0.0, 6.0, 6.0]]).repeat(4, 1)
    moved_images, moved = BatchBoxAffine(0.0, (4.0, 4.0), hflip=False)(images, boxes)
    torch.testing.assert_close(moved, boxes)  # the samples, as they were
    torch.testing.assert_close(moved_images, images, atol=1e-5, rtol=0)


# --- losses and metrics -------------------------------------------------------------------------


def test_losses_and_metrics_against_hand_computed_values():
    model = LocalizationModule(num_classes=2, backbone_kwargs={"channels": [4, 8]})
    # IoU of [0,0,2,2] and [1,1,3,3]: overlap 1, union 7; the enclosing box has area 9.
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    true = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    terms = model.losses(logits, pred, labels, true)
    ce = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    giou = 1 / 7 - (9 - 7) / 9
    assert terms["loss_cls"].item() == pytest.approx(ce)
    assert terms["loss_l1"].item() == pytest.approx(4 / 8)  # 1 per coordinate of the first pair
    assert terms["loss_giou"].item() == pytest.approx(((1 - giou) + 0) / 2, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(ce + 5 * 0.5 + 2 * (1 - giou) / 2, abs=1e-5)
    # L1, not squared: a corner 2 off counts 2
    far = model.losses(logits[:1], pred[:1], labels[:1], torch.tensor([[0.0, 0.0, 2.0, 4.0]]))
    assert far["loss_l1"].item() == pytest.approx(2 / 4)

    probs = logits.softmax(1)
    miou = MeanIoU()
    miou.update(pred, true)
    assert miou.compute().item() == pytest.approx((1 / 7 + 1) / 2)
    loc, known = LocalizationAccuracy(), LocalizationAccuracy(need_class=False)
    per_class = LocalizationAccuracy(num_classes=3)
    for metric in (loc, known, per_class):
        # second image: perfect box, but [0, 0] logits argmax to class 0, not 1
        metric.update(probs, labels, pred, true)
    assert (loc.compute().item(), known.compute().item()) == (0.0, 0.5)
    assert per_class.compute()[:2].tolist() == [0.0, 0.0] and per_class.compute()[2].isnan()  # no image of class 2
    scored = model.configure_metrics("val")  # the task's own: loc_acc needs the class, gt_known_loc not
    scored.update(preds=probs, target=labels, pred_boxes=pred, target_boxes=true)
    values = {key.rsplit("/", 1)[-1]: value.item() for key, value in scored.compute().items()}
    assert (values["loc_acc"], values["gt_known_loc"], values["miou"]) == (0.0, 0.5, pytest.approx((1 / 7 + 1) / 2))

    # IoU ≥ 0.5 localises: [0,0,2,2] against [0,0,2,4] is exactly 0.5, against [0,0,2,5] 0.4
    at_bar, below = LocalizationAccuracy(need_class=False), LocalizationAccuracy(need_class=False)
    at_bar.update(probs[:1], labels[:1], pred[:1], torch.tensor([[0.0, 0.0, 2.0, 4.0]]))
    below.update(probs[:1], labels[:1], pred[:1], torch.tensor([[0.0, 0.0, 2.0, 5.0]]))
    assert (at_bar.compute().item(), below.compute().item()) == (1.0, 0.0)

    boxes = decode_boxes(torch.tensor([[-50.0, 50.0, -10.0, 30.0], [0.0, 0.0, 0.0, 0.0]]))
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    torch.testing.assert_close(boxes[1], torch.tensor([0.25, 0.25, 0.75, 0.75]))


def test_box_loss_ciou_is_the_complete_iou_loss():
    """``box_loss: ciou`` adds the centres' distance over the enclosing box's diagonal (both
    squared) to 1 - IoU, where GIoU adds the enclosing box's empty share."""
    model = LocalizationModule(num_classes=2, backbone_kwargs={"channels": [4, 8]}, box_loss="ciou")
    pred, true = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    terms = model.losses(torch.tensor([[2.0, 0.0]]), pred, torch.tensor([0]), true)
    ciou = 1 - 1 / 7 + 2 / 18  # centres 1 apart on each axis, enclosing box 3×3; both square
    assert "loss_giou" not in terms and terms["loss_ciou"].item() == pytest.approx(ciou, abs=1e-6)
    expected = terms["loss_cls"] + 5 * terms["loss_l1"] + 2 * ciou
    assert terms["loss"].item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_a_box_past_the_image_is_scored_as_predict_gives_it_clipped():
    """The network's box may reach past the image; predict clips it to the image, and the
    metrics scored the unclipped one, below what predict's boxes score."""
    model = LocalizationModule(num_classes=2, backbone_kwargs={"channels": [4, 8]})
    box, truth = torch.tensor([[-0.5, 0.0, 0.5, 1.0]]), torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    model.forward = lambda x: (torch.tensor([[3.0, 0.0]]), box)
    model._step((torch.zeros(1, 1, 32, 32), torch.tensor([0]), truth), "val")
    values = model.val_metrics.compute()
    assert values["val/miou"].item() == pytest.approx(1.0) and values["val/loc_acc"].item() == 1.0


def test_the_crop_class_head_reads_the_image_inside_the_squared_box_and_nothing_else():
    """A tall 8×16 px bar, cropped by its tight box: the crop is square about the box's centre
    with a tenth more on each side, so the bar keeps its shape (half as wide as high) and
    fills 1/1.1 of the crop's height; pixels outside that window do not reach the class."""
    crops = []
    head = CropClassifierHead(nn.Sequential(), nn.Sequential(), size=44)
    head.backbone.register_forward_hook(lambda module, args, out: crops.append(args[0]))
    image = torch.zeros(1, 1, 64, 64)
    image[..., 20:36, 10:18] = 1.0
    box = torch.tensor([[10 / 64, 20 / 64, 18 / 64, 36 / 64]])
    head(image, box)
    bright = crops[-1][0, 0] > 0.5
    assert bright.any(dim=1).sum().item() == 40  # 16 px of 17.6 px of window, on 44 rows
    assert bright.any(dim=0).sum().item() == 20  # 8 of 17.6: the bar stays half as wide as high
    outside = image.clone()
    outside[..., :, 30:] = torch.rand(1, 1, 64, 34)  # right of the window (x ≤ 22.8)
    outside[..., 40:, :] = torch.rand(1, 1, 24, 64)  # below it (y ≤ 36.8)
    torch.testing.assert_close(head(outside, box), crops[-2])


def test_the_crop_class_head_trains_and_rebuilds_from_its_checkpoint(tmp_path, csv_folder):
    run = fit(tmp_path, "--data.data_dir", str(csv_folder), "--model.class_head", "crop",
              "--model.crop_size", "16", "--trainer.max_epochs", "1", "--evaluate", "false")  # fmt: skip
    model, _ = rebuild_for_inference(run / "checkpoints" / "last.ckpt")
    assert isinstance(model.head, CropClassifierHead) and model.head.size == 16
    logits, boxes = model.eval()(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 2) and boxes.shape == (2, 4)
    # no class score comes from the box's backbone, so inspect draws no Grad-CAM on it
    main(["inspect", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--data.data_dir", str(csv_folder),
          "--out", str(tmp_path / "inspect")])  # fmt: skip
    report = json.loads((tmp_path / "inspect" / "stages.json").read_text())
    assert report["gradcam"]["score"].startswith("no Grad-CAM") and "class" not in report["gradcam"]


@pytest.mark.parametrize(
    "setting,said",
    [
        ({"crop_size": 0}, r"model.crop_size=0: expected the crop's side in pixels"),
        ({"box_grid": 0}, r"model.box_grid=0: expected at least 1"),
        ({"class_head": "roi", "roi_stage": 2}, r"model.roi_stage=2: expected an index of the 2 backbone stages"),
        ({"class_head": "roi", "roi_stage": -3}, r"model.roi_stage=-3: expected an index of the 2 backbone stages"),
        ({"class_head": "box"}, r"model.class_head='box': expected 'roi', 'crop' or 'global'"),
        ({"box_loss": "iou"}, r"model.box_loss='iou': expected one of"),
    ],
)
def test_a_head_setting_out_of_range_is_a_config_error_naming_it(setting, said):
    """The box head's settings are checked where they are given, not met as an IndexError or a
    shape error when the network is built or first run."""
    with pytest.raises(ConfigError, match=said):
        LocalizationModule(num_classes=2, backbone_kwargs={"channels": [4, 8]}, **setting)
    for index in (-2, 1):  # every stage index the backbone has is taken
        LocalizationModule(num_classes=2, backbone_kwargs={"channels": [4, 8]}, class_head="roi", roi_stage=index)


def test_backbone_weights_start_the_crop_network_too(tmp_path):
    """The crop's network is the same backbone: a weights file starts both, and both map the
    data's normalisation onto the file's."""
    small = {"channels": [4, 8], "blocks_per_stage": 1}
    donor = LocalizationModule(num_classes=2, backbone_kwargs=small)
    torch.save(donor.backbone.state_dict(), tmp_path / "backbone.pt")
    model = LocalizationModule(
        num_classes=2, backbone_kwargs=small, backbone_weights=str(tmp_path / "backbone.pt"),
        input_normalisation={"mean": [0.5], "std": [0.5]}, backbone_weights_meta={"mean": [0.1], "std": [0.2]},
    )  # fmt: skip
    assert model.hparams.class_head == "crop"
    for key, value in donor.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
        assert torch.equal(model.head.backbone.state_dict()[key], value), key
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(model.head.backbone.input_map(x), model.backbone.input_map(x))
    assert model.head.backbone.input_map is not model.backbone.input_map


# --- the embedded default, a fit and its evaluation ---------------------------------------------


def test_default_canvases_use_the_shared_split(tmp_path, monkeypatch):
    monkeypatch.setattr(loc_data, "DEFAULT_CANVASES_PER_SCAN", {"train": 1, "val": 1, "test": 1})
    dm = LocalizationDataModule(data_root=str(tmp_path / "data"))
    dm.prepare_data()
    dm.setup("fit")  # the same CSV reader and checks as a user's folder
    split = digit_split()
    for stage in ("train", "val", "test"):
        scans = {int(name.split("_")[1]) for name in dm.splits[stage]}
        assert scans == set(split[stage]), stage
    x, label, box = dm.datasets["test"][0]
    assert x.shape == (1, 64, 64) and 0 <= label < 10
    assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1


def fit(tmp_path, *extra):
    return run_fit(
        "localization2d", tmp_path,
        "--data.image_size", "32", "--data.batch_size", "8",
        "--model.backbone_kwargs", '{"channels": [8, 16, 16], "blocks_per_stage": 1}',
        "--model.box_grid", "2", *extra,
    )  # fmt: skip


def test_fast_dev_run(tmp_path, csv_folder):
    fit(tmp_path, "--data.data_dir", str(csv_folder), "--trainer.fast_dev_run", "true")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs on a tiny user folder: ``(folder, checkpoint)``, shared by this file's tests
    of a checkpoint."""
    tmp = tmp_path_factory.mktemp("localization")
    folder = make_csv_folder(tmp / "user")
    run = fit(tmp, "--data.data_dir", str(folder), "--trainer.max_epochs", "2", "--evaluate", "false")
    return folder, run / "checkpoints" / "best.ckpt"


def test_fit_and_evaluate_a_checkpoint(tmp_path, trained, monkeypatch):
    folder, ckpt = trained
    # The pictures are drawn from the test pass's outcomes: the network does not run again for them.
    calls = watch_network_and_plots(monkeypatch, LocalizationModule)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert (hparams["num_classes"], hparams["in_channels"], hparams["class_names"]) == (2, 3, ["cat", "dog"])
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/acc", "test/miou", "test/loc_acc", "test/gt_known_loc", "test/acc/cat", "test/loc_acc/dog"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test/loc_acc"] <= min(metrics["test/acc"], metrics["test/gt_known_loc"])
    produced = {p.name for p in (tmp_path / "eval").iterdir()}
    assert {"predictions.png", "iou_histogram.png", "confusion_matrix.png", "training_curves.png"} <= produced
    assert calls[-1] == "plots" and "forward" in calls


def test_a_folder_of_one_of_the_two_classes_is_scored_by_name(tmp_path, trained):
    """Test images all labelled ``dog`` are the model's second class, not the data's first."""
    folder, ckpt = trained
    other = shutil.copytree(folder, tmp_path / "dogs")
    rows = (other / "labels.csv").read_text().splitlines()
    (other / "labels.csv").write_text("\n".join([rows[0], *(r for r in rows[1:] if ",dog," in r)]) + "\n")
    _, datamodule = rebuild(ckpt, None, {"data_dir": str(other)})
    assert datamodule.class_names == ["cat", "dog"]
    datamodule.setup("test")
    assert set(datamodule.datasets["test"].labels) == {1}
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(other), "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test/acc/cat"] is None and metrics["test/loc_acc/cat"] is None
    assert 0.0 <= metrics["test/loc_acc/dog"] <= 1.0


# --- prediction on raw files ----------------------------------------------------------------------


def test_predict_a_folder_with_an_unreadable_image(tmp_path, trained):
    folder, ckpt = trained
    inputs = tmp_path / "inputs"
    shutil.copytree(folder / "pics", inputs)
    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    main(["predict", "--ckpt", str(ckpt), "--input", str(inputs), "--out", str(out)])
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 17
    (bad,) = [line for line in lines if "error" in line]
    assert bad["path"].endswith("broken.png") and "broken.png" in bad["error"]
    for line in lines:
        if line is bad:
            continue
        assert line["class"] in CLASSES and line["score"] == max(line["probabilities"].values())
        width, height = Image.open(line["path"]).size  # the box is in the file's own pixels
        x1, y1, x2, y2 = line["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (line["box"], width, height)
    assert len(list((out / "pictures").glob("*.png"))) == 16
    assert json.loads((out / "summary.json").read_text())["failed"] == [bad["path"]]


def test_predict_agrees_with_the_test_split(trained):
    """A file read for prediction is the test dataset's item for it, and the prediction is the
    model's output on that item, its box scaled to the file's pixels."""
    folder, ckpt = trained
    model, datamodule = rebuild(ckpt, data={"data_dir": folder})
    test = datamodule.datasets["test"]
    predictor = Predictor(ckpt, accelerator="cpu")
    inputs = [predictor.read(folder / sample_id) for sample_id in test.ids]
    for item, index in zip(inputs, range(len(test)), strict=True):
        torch.testing.assert_close(item.sample, test[index][0], rtol=0, atol=0)
    predictions = predictor.predict(inputs)
    with torch.no_grad():
        logits, boxes = model(torch.stack([test[i][0] for i in range(len(test))]))
    got = torch.tensor([[p["probabilities"][c] for c in CLASSES] for p in predictions])
    torch.testing.assert_close(got, logits.softmax(1), atol=1e-6, rtol=1e-5)
    sizes = torch.tensor([[i.meta["width"], i.meta["height"]] * 2 for i in inputs], dtype=torch.float32)
    expected = torch.minimum(boxes.clamp(min=0) * sizes, sizes)
    torch.testing.assert_close(torch.tensor([p["box"] for p in predictions]), expected, atol=1e-4, rtol=1e-5)


def test_the_exported_box_meaning_says_that_predict_clips_to_the_image():
    """A program following the export's words for ``boxes`` must get predict's box: predict
    clips a box reaching past the image to it, and the words said only to multiply (a box
    half off the image came out up to several pixels apart)."""
    from cnnsuite.data.inputs import Input

    model = LocalizationModule(num_classes=2, backbone_kwargs={"channels": [4, 8]})
    meaning = model.inference_outputs["boxes"]
    assert "clipped to the image" in meaning
    item = Input(path=None, sample=None, meta={"width": 40, "height": 20})
    logits, boxes = torch.zeros(1, 2), torch.tensor([[-0.25, 0.1, 1.5, 0.9]])
    (prediction,) = model.describe_outputs((logits, boxes), [item])
    assert prediction["box"] == pytest.approx([0.0, 2.0, 40.0, 18.0])


def test_an_image_of_another_size_than_its_coco_or_voc_annotation_says_is_named(tmp_path):
    """The boxes of a COCO or VOC annotation are in the pixels of the size it declares: an image
    of another size (resized after labelling, or labelled as stored where its EXIF turns it) is
    named before training, as detection2d names it, not trained on with boxes in the wrong frame."""
    coco = write_coco(tmp_path / "coco", [1, 1, 1, 1])
    doc = json.loads((coco / "annotations.json").read_text())
    doc["images"][1].update(width=32, height=48)  # the box (2, 3, 12, 15) lies inside either frame
    (coco / "annotations.json").write_text(json.dumps(doc))
    said = r"images/1\.png \(id 2\): the image is 48x32 pixels but its annotation says 32x48 \(the upright image turned"
    with pytest.raises(BadFileError, match=said):
        LocalizationDataModule(data_dir=str(coco)).setup("fit")
    voc = write_voc(tmp_path / "voc", [1, 1, 1])
    xml = voc / "Annotations" / "2.xml"
    xml.write_text(xml.read_text().replace("<width>48</width>", "<width>96</width>"))
    dm = LocalizationDataModule(data_dir=str(voc), on_bad_file="skip")
    with pytest.warns(
        UserWarning, match=r"2\.xml: image JPEGImages/2\.jpg: the image is 48x32 pixels but its annotation says 96x32"
    ):
        dm.setup("fit")
    assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == 2  # left out
