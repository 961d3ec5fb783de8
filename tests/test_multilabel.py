"""Multi-label classification: label cells with several labels, iterative splits, sigmoid
outputs, thresholds chosen on validation, through fit, evaluate, predict and export."""

import csv
import io
import json
import logging
import shutil
import warnings
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from cnnsuite.tasks.biomedical3d.datamodule import Biomedical3DDataModule
from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule
from conftest import fit, make_image_folder
from PIL import Image
from starlette.datastructures import FormData
from test_multispectral3d import SMALL_MODEL, bigearthnet_patches, write_bigearthnet

from cnnsuite.cli import main
from cnnsuite.data.labels import parse_labels
from cnnsuite.data.splits import stratified_split
from cnnsuite.training.classification import ClassificationModule
from cnnsuite.trust.checkpoint import rebuild

SMALL = ["--data.spatial_size", "[16, 16, 16]", "--model.init_args.backbone_kwargs", "{channels: [4, 8]}"]


def test_label_cells_decide_multilabel_and_say_so_once(caplog):
    cells = ["a", "b ; a", "c;b", "a"]
    with caplog.at_level(logging.INFO):
        names, targets, multilabel = parse_labels(cells, source="labels.csv")
    assert names == ["a", "b", "c"] and multilabel is True
    assert np.array_equal(np.stack(targets), [[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 0, 0]])
    assert targets[0].dtype == np.float32
    said = [r.getMessage() for r in caplog.records if "several labels" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("labels.csv: 2 of 4 samples have several labels")
    # A single-label file gives class indices, as the readers always have, and says nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert parse_labels(["10", "2", "2"]) == (["2", "10"], [1, 0, 0], False)
    assert not caplog.records
    # true: one-hot; false with several labels: the row named.
    names, targets, multilabel = parse_labels(["x", "y"], multilabel=True)
    assert multilabel and np.array_equal(np.stack(targets), [[1, 0], [0, 1]])
    where = [f"labels.csv, line {n}" for n in range(2, 6)]
    with pytest.raises(ValueError, match=r"labels.csv, line 3: 'b;a' holds 2 labels, but data.multilabel=false"):
        parse_labels(cells, multilabel=False, where=where)
    with pytest.raises(ValueError, match="data.multilabel='yes': expected auto, true or false"):
        parse_labels(cells, multilabel="yes")
    with pytest.raises(ValueError, match="data.multilabel=1: expected auto, true or false"):
        parse_labels(cells, multilabel=1)  # equal to True, but not a setting
    # a label written twice in one cell is one label: the file stays single-label
    assert parse_labels(["a;a", " b ;b"]) == (["a", "b"], [0, 1], False)


def test_iterative_split_keeps_a_rare_label_in_val_and_test():
    ids = [f"s{i:03d}" for i in range(100)]
    cells = ["common;rare" if i % 17 == 0 else "common" if i % 2 else "other" for i in range(100)]
    names, targets, _ = parse_labels(cells)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # split_off warns when it cannot stratify
        splits = stratified_split(ids, targets, 0.2, 0.2, seed=0)
    rare = {i for i, cell in zip(ids, cells, strict=True) if "rare" in cell}
    assert all(rare & set(splits[s]) for s in ("train", "val", "test"))
    assert sorted(sum(splits.values(), [])) == ids
    # Class indices split as before.
    single = stratified_split(ids, [i % 3 for i in range(100)], 0.2, 0.2, seed=0)
    assert len(single["test"]) == 20 and len(single["val"]) == 20


def test_thresholds_maximise_each_class_f1_on_validation():
    model = ClassificationModule(num_classes=3, class_names=["a", "b", "c"], multilabel=True)
    assert model.monitor == "val/map_macro" and ClassificationModule.monitor == "val/acc"
    probs = torch.tensor([[0.9, 0.3, 0.1], [0.7, 0.25, 0.2], [0.2, 0.1, 0.3], [0.1, 0.05, 0.4]])
    target = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    model.val_curve.update(probs, target)
    model.choose_thresholds()
    # a: any threshold in (0.2, 0.7] separates, the lowest such grid value wins; b: only 0.3
    # is above 0.25; c has no positive and keeps its 0.5
    assert model.thresholds.tolist() == pytest.approx([0.25, 0.3, 0.5])
    assert model.describe_probabilities(probs[0])["labels"] == ["a", "b"]


def test_a_fit_chooses_the_thresholds_on_its_validation_and_a_validate_leaves_them(tmp_path):
    """Thresholds are chosen when a fit validates (every label with a positive gets the grid
    value of its best F1: here the lowest, every sample carrying every label), never by a
    ``validate`` of a trained model, whose thresholds are the ones it predicts with."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = ClassificationModule(num_classes=2, multilabel=True, backbone_kwargs={"channels": [4]})
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.0)
    data = DataLoader(TensorDataset(torch.randn(4, 1, 8, 8), torch.ones(4, 2, dtype=torch.long)))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data, data)
    torch.testing.assert_close(model.thresholds, torch.full((2,), 0.05))
    model.thresholds.fill_(0.7)
    trainer.validate(model, data, verbose=False)
    torch.testing.assert_close(model.thresholds, torch.full((2,), 0.7))


def test_a_probability_exactly_at_its_threshold_is_a_label_as_the_curve_that_chose_it_counts_it():
    """torchmetrics' precision-recall curve, on which the thresholds are chosen, counts a
    probability equal to a threshold as positive (``>=``; its thresholded F1 and accuracy count
    only those above): a label is predicted at or above its threshold, so the decisions at a
    chosen threshold score the F1 it was chosen for."""
    model = ClassificationModule(num_classes=2, class_names=["a", "b"], multilabel=True)
    assert model.decide(torch.tensor([[0.5, 0.5 - 1e-6]])).tolist() == [[True, False]]  # the initial 0.5
    grid = torch.linspace(*model.threshold_grid)
    # each class's positives exactly on a grid value, its negatives on the value below
    probs = torch.stack([grid[[12, 12, 11, 11]], grid[[6, 5, 6, 5]]], dim=1)
    target = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]])
    model.val_curve.update(probs, target)
    model.choose_thresholds()
    assert torch.equal(model.thresholds, grid[[12, 6]])
    assert torch.equal(model.decide(probs).long(), target)


def make_multilabel_volumes(root, count=18):
    """16³ volumes of noise; a bright blob in corner A is label ``a``, in corner B label ``b``."""
    rng = np.random.default_rng(0)
    (root / "scans").mkdir(parents=True)
    rows = []
    for index in range(count):
        labels = ["a", "b", "a;b"][index % 3]
        volume = rng.normal(size=(16, 16, 16)).astype(np.float32)
        if "a" in labels:
            volume[:6, :6, :6] += 4
        if "b" in labels:
            volume[10:, 10:, 10:] += 4
        name = f"scans/v{index}.nii.gz"
        nib.save(nib.Nifti1Image(volume, np.eye(4)), root / name)
        rows.append((name, labels))
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), *rows])
    return root


def test_biomedical3d_multilabel_labels_csv_fits_evaluates_predicts_and_exports(tmp_path):
    folder = make_multilabel_volumes(tmp_path / "user")
    dm = Biomedical3DDataModule(data_dir=str(folder), spatial_size=[16, 16, 16])
    assert dm.multilabel and dm.class_names == ["a", "b"]
    run = fit("biomedical3d", tmp_path, *SMALL, "--data.data_dir", str(folder), "--trainer.max_epochs", "2",
              "--data.batch_size", "6", "--data.augment", "false", "--data.val_fraction", "0.25",
              "--data.test_fraction", "0.25")  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    assert checkpoint["hyper_parameters"]["multilabel"] is True
    callback = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor'"))
    assert (
        "'monitor': 'val/map_macro', 'mode': 'max'"
        in next(k for k in checkpoint["callbacks"] if k.startswith("ModelCheckpoint{'monitor'"))
        and callback["best_model_score"] is not None
    )
    assert "monitor: val/map_macro" in (run / "config.yaml").read_text()
    thresholds = checkpoint["state_dict"]["thresholds"]
    assert thresholds.shape == (2,) and all(0.05 <= t <= 0.95 for t in thresholds.tolist())

    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert {"test/map_macro", "test/map_micro", "test/f1_macro", "test/f1_micro", "test/ap/a", "test/ap/b"} <= set(
        metrics
    )
    assert (run / "evaluation" / "class_ap.png").stat().st_size > 0

    # predict: the labels at or above the checkpoint's thresholds, as the rebuilt model decides them
    model, datamodule = rebuild(ckpt, run, {"data_dir": str(folder)})
    datamodule.setup("test")
    test_ids = datamodule.splits["test"]
    main(["predict", "--ckpt", str(ckpt), "--input", str(folder / "scans"), "--out", str(tmp_path / "pred")])
    lines = {json.loads(line)["path"]: json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").open()}
    dataset = datamodule.datasets["test"]
    for index, sample_id in enumerate(test_ids):
        with torch.no_grad():
            probs = model(dataset[index]["image"][None]).sigmoid()[0]
        expected = [n for n, p, t in zip(model.class_names, probs, model.thresholds, strict=True) if p >= t]
        line = lines[str(folder / sample_id)]
        assert line["labels"] == expected and set(line["thresholds"]) == {"a", "b"}
        assert line["probabilities"]["a"] == pytest.approx(float(probs[0]), abs=1e-5)

    main(["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "model.onnx")])
    info = json.loads((tmp_path / "model.onnx.json").read_text())
    assert info["multilabel"] is True
    assert info["thresholds"] == pytest.approx(dict(zip(["a", "b"], thresholds.tolist(), strict=True)))
    assert "independent sigmoid" in info["outputs"][0]["meaning"]


def test_biomedical3d_single_label_file_stays_single_label_and_false_refuses_several(tmp_path):
    folder = make_multilabel_volumes(tmp_path / "user", count=3)
    with pytest.raises(ValueError, match=r"labels.csv, line 4: 'a;b' holds 2 labels, but data.multilabel=false"):
        Biomedical3DDataModule(data_dir=str(folder), multilabel=False)
    (folder / "labels.csv").write_text("image,label\nscans/v0.nii.gz,a\nscans/v1.nii.gz,b\n")
    dm = Biomedical3DDataModule(data_dir=str(folder))
    assert not dm.multilabel and dm.list_samples() == [("scans/v0.nii.gz", 0), ("scans/v1.nii.gz", 1)]
    forced = Biomedical3DDataModule(data_dir=str(folder), multilabel=True)
    assert forced.multilabel and np.array_equal(forced.list_samples()[1][1], [0, 1])


def test_bigearthnet_multilabel_metadata_trains_multispectral3d(tmp_path):
    patches = bigearthnet_patches(per_class=4)
    for name in list(patches)[::3]:
        patches[name] = [*patches[name], "Inland waters"]
    root = write_bigearthnet(tmp_path / "ben", patches, size=12)
    run = fit("multispectral3d", tmp_path, *SMALL_MODEL, "--data.data_dir", str(root), "--trainer.max_epochs", "1",
              "--data.batch_size", "4", "--evaluate", "false")  # fmt: skip
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["multilabel"] is True
    assert checkpoint["hyper_parameters"]["class_names"] == ["Coniferous forest", "Inland waters", "Pastures"]
    assert "val/map_macro" in (run / "metrics.csv").read_text().splitlines()[0]


def test_detection_and_localization_refuse_multilabel():
    from cnnsuite.tasks.detection2d.module import DetectionModule
    from cnnsuite.tasks.localization2d.module import LocalizationModule

    with pytest.raises(ValueError, match="detection2d has no multi-label mode"):
        DetectionModule(multilabel=True)
    with pytest.raises(ValueError, match="localization2d has no multi-label mode"):
        LocalizationModule(multilabel=True)


def test_labels_csv_with_one_column_per_class(tmp_path):
    """``image,<class>,<class>`` with 0/1 values: the columns are the classes, in the file's order."""
    folder = make_multilabel_volumes(tmp_path / "user", count=3)
    (folder / "labels.csv").write_text("image,b,a\nscans/v0.nii.gz,0,1\nscans/v1.nii.gz,1,0\nscans/v2.nii.gz,1.0,1.0\n")
    dm = Biomedical3DDataModule(data_dir=str(folder))
    assert dm.multilabel and dm.class_names == ["b", "a"]
    assert [(i, t.tolist()) for i, t in dm.list_samples()] == [
        ("scans/v0.nii.gz", [0, 1]), ("scans/v1.nii.gz", [1, 0]), ("scans/v2.nii.gz", [1, 1])
    ]  # fmt: skip
    # one 1 a row: single-label, class indices in the columns' order
    (folder / "labels.csv").write_text("image,b,a\nscans/v0.nii.gz,0,1\nscans/v1.nii.gz,1,0\n")
    dm = Biomedical3DDataModule(data_dir=str(folder))
    assert not dm.multilabel and dm.list_samples() == [("scans/v0.nii.gz", 1), ("scans/v1.nii.gz", 0)]
    # a row of 0s ("no finding") carries no class: only a multi-label run can learn it
    (folder / "labels.csv").write_text("image,b,a\nscans/v0.nii.gz,0,1\nscans/v1.nii.gz,0,0\n")
    dm = Biomedical3DDataModule(data_dir=str(folder))
    assert dm.multilabel and [t.tolist() for _, t in dm.list_samples()] == [[0, 1], [0, 0]]
    with pytest.raises(ValueError, match=r"labels.csv, line 3: holds no label, but data.multilabel=false"):
        Biomedical3DDataModule(data_dir=str(folder), multilabel=False)
    (folder / "labels.csv").write_text("image,label\nscans/v0.nii.gz,a\nscans/v1.nii.gz,\n")
    with pytest.raises(ValueError, match=r"labels.csv, line 3: empty image or label"):  # an empty cell is a mistake
        Biomedical3DDataModule(data_dir=str(folder))
    (folder / "labels.csv").write_text("image,b,a\nscans/v0.nii.gz,0,1\nscans/v1.nii.gz,yes,0\n")
    with pytest.raises(ValueError, match=r"labels.csv, line 3, column b: 'yes'; expected 0 or 1"):
        Biomedical3DDataModule(data_dir=str(folder))
    (folder / "labels.csv").write_text("file,b\nscans/v0.nii.gz,1\n")
    with pytest.raises(ValueError, match=r"expected columns image,label or image and one 0/1 column per class"):
        Biomedical3DDataModule(data_dir=str(folder))


def make_multilabel_images(root, count=24, layout="cells"):
    """Noise images of varied sizes, RGB and gray; a bright left half is label ``left``, a bright
    right half ``right``; ``labels.csv`` as ``a;b`` cells or one 0/1 column per class."""
    rng = np.random.default_rng(0)
    (root / "photos").mkdir(parents=True)
    rows = []
    for index in range(count):
        labels = ["left", "right", "left;right"][index % 3]
        h, w = (int(n) for n in rng.integers(20, 40, size=2))
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        if "left" in labels:
            image[:, : w // 2] += 150
        if "right" in labels:
            image[:, w // 2 :] += 150
        name = f"photos/p{index}.png"
        pil = Image.fromarray(image)
        (pil.convert("L") if index % 4 == 1 else pil).save(root / name)
        rows.append((name, labels) if layout == "cells" else (name, int("left" in labels), int("right" in labels)))
    header = ("image", "label") if layout == "cells" else ("image", "left", "right")
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return root


@pytest.fixture(scope="module")
def trained_images(tmp_path_factory):
    """A two-epoch multi-label recognition2d run on a labels.csv folder, its loss weighted by
    the training split's label frequencies: ``(folder, run folder)``."""
    tmp = tmp_path_factory.mktemp("images")
    folder = make_multilabel_images(tmp / "user")
    run = fit("recognition2d", tmp, "--data.data_dir", str(folder), "--trainer.max_epochs", "2",
              "--data.batch_size", "8", "--data.augment", "false", "--data.val_fraction", "0.25",
              "--data.test_fraction", "0.25", "--model.init_args.class_weights", "true")  # fmt: skip
    return folder, run


def test_recognition2d_multilabel_labels_csv_trains(trained_images, tmp_path):
    folder, run = trained_images
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["multilabel"] is True
    assert checkpoint["hyper_parameters"]["class_names"] == ["left", "right"]
    assert checkpoint["state_dict"]["thresholds"].shape == (2,)
    # class_weights: negatives / positives of each class in the training split, kept in the
    # checkpoint and rebuilt from it
    model, datamodule = rebuild(run / "checkpoints" / "best.ckpt", run, {"data_dir": str(folder)})
    train = torch.tensor(np.stack([dict(datamodule.list_samples())[i] for i in datamodule.splits["train"]]))
    expected = (len(train) - train.sum(0)) / train.sum(0)
    assert checkpoint["state_dict"]["loss.pos_weight"].tolist() == pytest.approx(expected.tolist())
    assert model.loss.pos_weight.tolist() == pytest.approx(expected.tolist())
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert {"test/map_macro", "test/ap/left", "test/ap/right"} <= set(metrics)
    # one column per class reads the same; class folders stay single-label
    columns = RecognitionDataModule(data_dir=str(make_multilabel_images(tmp_path / "columns", 6, "columns")))
    assert columns.multilabel and columns.class_names == ["left", "right"] and columns.in_channels == 3
    assert [t.tolist() for _, t in columns.list_samples()] == [[1, 0], [0, 1], [1, 1]] * 2
    assert not RecognitionDataModule(data_dir=str(make_image_folder(tmp_path / "folders"))).multilabel


def test_a_multilabel_folder_lacking_a_class_is_labelled_by_the_models_classes(trained_images, tmp_path):
    """Images labelled ``right`` alone: each target is the model's two-class vector, ``left`` 0,
    and ``left``, with no positive, has no average precision."""
    folder, run = trained_images
    rows = list(csv.reader((folder / "labels.csv").read_text().splitlines()))
    (tmp_path / "labels.csv").write_text("\n".join(["image,label", *(f"{i},{c}" for i, c in rows if c == "right")]))
    other = tmp_path / "right_only"
    other.mkdir()
    shutil.move(tmp_path / "labels.csv", other / "labels.csv")
    shutil.copytree(folder / "photos", other / "photos")
    _, datamodule = rebuild(run / "checkpoints" / "best.ckpt", None, {"data_dir": str(other)})
    assert datamodule.multilabel and datamodule.class_names == ["left", "right"]
    assert {tuple(t.tolist()) for _, t in datamodule.samples()} == {(0.0, 1.0)}
    main(["evaluate", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--data.data_dir", str(other),
          "--out", str(tmp_path / "eval")])  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test/ap/left"] is None and 0.0 <= metrics["test/ap/right"] <= 1.0


def test_f1_macro_leaves_out_a_label_neither_carried_nor_predicted():
    """A label no test sample carries and the model never decides on has no F1: the macro mean
    is over the others, as ``map_macro``'s is (torchmetrics would average it in as 0). A label
    decided on where no sample carries it scores 0, as its false positives earn."""
    from cnnsuite.tasks.recognition2d.module import RecognitionModule

    model = RecognitionModule(num_classes=3, class_names=["a", "b", "c"], multilabel=True)
    model.configure_metrics("test")
    f1 = model.test_decision_metrics["f1_macro"]
    target = torch.tensor([[1, 0, 0], [0, 1, 0]])
    f1.update(target, target)
    assert f1.compute().item() == 1.0
    f1.update(torch.tensor([[1, 0, 1]]), torch.tensor([[1, 0, 0]]))  # c decided, never carried
    assert f1.compute().item() == pytest.approx(2 / 3)


def test_map_micro_pools_every_label_and_map_macro_averages_the_labels():
    from sklearn.metrics import average_precision_score

    generator = torch.Generator().manual_seed(1)
    logits, target = torch.randn(30, 3, generator=generator), torch.randint(0, 2, (30, 3), generator=generator)
    logits[:, 0] += 2 * target[:, 0]  # one label well ranked, the others by chance: the two means differ
    model = ClassificationModule(num_classes=3, multilabel=True, backbone="convnet", backbone_kwargs={"channels": [4]})
    model.update_metrics("val", logits, target, None)
    values = {k: float(v) for k, v in model.val_metrics.compute().items()}
    probs = logits.sigmoid().numpy()
    micro, macro = (average_precision_score(target.numpy(), probs, average=a) for a in ("micro", "macro"))
    assert micro != pytest.approx(macro, abs=1e-3)
    assert values["val/map_micro"] == pytest.approx(micro, abs=1e-6)
    assert values["val/map_macro"] == pytest.approx(macro, abs=1e-6)


def test_class_weights_set_bce_pos_weight_from_label_frequencies():
    targets = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]] * 40, dtype=torch.float32)
    model = ClassificationModule(num_classes=3, class_names=["a", "b", "c"], multilabel=True, class_weights=True)
    model.set_class_weights(targets)
    # negatives / positives: a 40/160, b 160/40; c has no positive: the range's top
    assert model.loss.pos_weight.tolist() == pytest.approx([0.25, 4.0, ClassificationModule.pos_weight_range[1]])
    logits, batch = torch.zeros(2, 3), targets[:2]  # class a only
    weighted = model.loss(logits, batch)
    assert weighted != pytest.approx(float(torch.nn.BCEWithLogitsLoss()(logits, batch)))
    assert weighted == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(logits, batch, pos_weight=model.loss.pos_weight))
    )
    assert "loss.pos_weight" in model.state_dict()
    assert "loss.pos_weight" not in ClassificationModule(num_classes=3, multilabel=True).state_dict()
    with pytest.raises(ValueError, match="model.class_weights=true: .* multi-label"):
        ClassificationModule(num_classes=3, class_weights=True)


def test_multilabel_predict_onnx_and_serve_agree_with_evaluate(trained_images, tmp_path):
    """On the test split of a multi-label run: the evaluated model's probabilities (which give
    evaluate's test/map_macro), ``cnnsuite predict``'s lines, ONNX Runtime on the export (its
    labels from the thresholds in the export's JSON) and the server's answers hold the same
    probabilities and the same labels at or above the thresholds."""
    import onnxruntime
    from torchmetrics.functional.classification import multilabel_average_precision

    from cnnsuite.use.serve import PredictorAPI

    folder, run = trained_images
    ckpt = run / "checkpoints" / "best.ckpt"
    model, datamodule = rebuild(ckpt, run, {"data_dir": str(folder)})
    datamodule.setup("test")
    ids, dataset = datamodule.splits["test"], datamodule.datasets["test"]
    items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == len(ids)
    images, targets = (torch.stack([torch.as_tensor(item[k]) for item in items]) for k in (0, 1))
    with torch.no_grad():
        evaluated = model(images).sigmoid()
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    score = multilabel_average_precision(evaluated, targets.long(), 2, average="macro")
    assert float(score) == pytest.approx(metrics["test/map_macro"], abs=1e-6)
    names = model.class_names

    def labels_of(probs, thresholds):
        return [n for n, p, t in zip(names, probs, thresholds, strict=True) if p >= t]

    expected = [labels_of(p.tolist(), model.thresholds.tolist()) for p in evaluated]
    assert any(expected)  # the run predicts labels: agreeing on none would prove little

    def check(source, probabilities, labels):
        for i, sample_id in enumerate(ids):
            got = torch.tensor([probabilities[i][n] for n in names])
            torch.testing.assert_close(got, evaluated[i], atol=1e-4, rtol=0, msg=f"{source}: {sample_id}")
            assert labels[i] == expected[i], (source, sample_id)

    out = tmp_path / "pred"
    main(["predict", "--ckpt", str(ckpt), "--input", str(folder / "photos"), "--out", str(out)])
    lines = {json.loads(line)["path"]: json.loads(line) for line in (out / "predictions.jsonl").open()}
    predicted = [lines[str(folder / i)] for i in ids]
    check("predict", [p["probabilities"] for p in predicted], [p["labels"] for p in predicted])

    main(["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "model.onnx")])
    info = json.loads((tmp_path / "model.onnx.json").read_text())
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = torch.stack([datamodule.read_input(folder / i).sample for i in ids]).numpy()
    (logits,) = session.run(None, {info["input"]["name"]: batch})
    sigmoids = torch.from_numpy(logits).sigmoid()
    thresholds = [info["thresholds"][n] for n in names]
    check("onnxruntime", [dict(zip(names, p.tolist(), strict=True)) for p in sigmoids],
          [labels_of(p.tolist(), thresholds) for p in sigmoids])  # fmt: skip

    api = PredictorAPI(ckpt, max_batch_size=len(ids))
    api.setup("cpu")
    files = [SimpleNamespace(filename=i, file=io.BytesIO((folder / i).read_bytes())) for i in ids]
    uploads = [FormData([("file", upload)]) for upload in files]
    replies = api.predict([api.decode_request(upload) for upload in uploads])
    served = [json.loads(api.encode_response(reply).body) for reply in replies]
    assert [reply.status for reply in replies] == [200] * len(ids)
    check("serve", [s["probabilities"] for s in served], [s["labels"] for s in served])


def test_biomedical3d_multilabel_baselines_score_map_on_intensity_histograms(tmp_path):
    from cnnsuite.tasks.biomedical3d import baselines

    folder = make_multilabel_volumes(tmp_path / "user", count=30)
    scores = baselines.main(["--data_dir", str(folder)])
    assert set(scores) == {
        f"{name}, {average} mAP"
        for name in ("label frequency", "intensity histogram (logistic regression)")
        for average in ("macro", "micro")
    }
    assert all(0 < value <= 1 for value in scores.values())
    # each label's blob adds a bright tail to the histogram: the regression ranks better than the prior
    regression = scores["intensity histogram (logistic regression), macro mAP"]
    assert regression > scores["label frequency, macro mAP"]


def test_the_baselines_score_each_label_by_its_own_frequency_and_a_regression_by_its_positive_class():
    """The prior scores each label at its training frequency, so micro mAP (one ranking over
    every label) ranks a frequent label's entries above a rare one's; a label never present in
    training keeps its frequency (nothing to fit); the regression ranks by the positive class."""
    from cnnsuite.training.baselines import multilabel_scores

    y_train = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]])  # frequencies 0.75, 0.25, 0
    y_test = np.array([[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0]])
    x_train, x_test = y_train[:, :2] * 4.0 - 2, np.array([[2.0, 2.0], [2.0, -2.0], [2.0, -2.0], [2.0, -2.0]])
    scores = multilabel_scores(x_train, y_train, x_test, y_test, "f")
    # pooled: 4 of 4 right at 0.75, 5 of 8 at 0.25, 6 of 12 at 0
    assert scores["label frequency, micro mAP"] == pytest.approx(4 / 6 + 1 / 6 * 5 / 8 + 1 / 6 * 6 / 12)
    assert scores["label frequency, macro mAP"] == pytest.approx((1 + 1 / 4 + 1 / 4) / 3)
    assert scores["f (logistic regression), macro mAP"] == pytest.approx((1 + 1 + 1 / 4) / 3)


def test_multilabel_label_smoothing_pulls_each_label_toward_one_half():
    """Each label is its own two-class problem: smoothing ``s`` makes the BCE targets
    ``1 - s/2`` and ``s/2``, as cross-entropy's does for two classes."""
    model = ClassificationModule(num_classes=2, multilabel=True, label_smoothing=0.2, backbone_kwargs={"channels": [4]})
    model.eval()
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([[1, 0], [0, 1], [1, 1]])
    loss = model.training_step((x, y), 0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y.float() * 0.8 + 0.1)
    torch.testing.assert_close(loss, expected)
