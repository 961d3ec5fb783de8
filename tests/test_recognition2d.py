"""recognition2d end to end through the real CLI: fit, checkpoints, evaluation, errors."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import yaml
from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule
from cnnsuite.tasks.recognition2d.module import RecognitionModule
from conftest import ROOT, make_image_folder, watch_network_and_plots
from conftest import fit as run_fit

from cnnsuite.cli import main
from cnnsuite.data import BadFileError, read_image
from cnnsuite.data.digits import digit_split

CONFIG = str(ROOT / "tasks" / "recognition2d" / "config.yaml")


def fit(tmp_path, *extra):
    return run_fit("recognition2d", tmp_path, *extra)


def snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_user_folder_fit_evaluate_and_checkpoint_contract(tmp_path, image_folder, monkeypatch):
    before = snapshot(image_folder)
    run = fit(tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "2", "--data.batch_size", "8")
    assert snapshot(image_folder) == before, "the user's folder was written to"
    assert not (tmp_path / "data").exists(), "a user folder needs no materialised default"
    for name in ("config.yaml", "metrics.csv", "splits.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    ckpt = run / "checkpoints" / "best.ckpt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    # linked from the datamodule: 3 classes, RGB (the first file is RGB)
    assert (hparams["num_classes"], hparams["in_channels"], hparams["class_names"]) == (3, 3, ["cat", "dog", "owl"])

    # fit ended with the evaluation of best.ckpt; evaluate again into another folder
    assert (run / "evaluation" / "metrics.json").is_file()
    monkeypatch.chdir(tmp_path / "runs")  # from any folder, given where the data is
    # The pictures show the test pass's predictions: the network does not run again for them.
    calls = watch_network_and_plots(monkeypatch, RecognitionModule)
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(image_folder), "--out", str(tmp_path / "eval")])
    assert calls[-1] == "plots" and "forward" in calls
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/acc", "test/acc_macro", "test/f1_macro", "test/auroc", "test/acc/cat", "test/acc/owl"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0, key
    assert all(isinstance(v, float) for v in metrics.values())
    assert {"confusion_matrix.png", "predictions.png", "training_curves.png", "report.md"} <= {
        p.name for p in (tmp_path / "eval").iterdir()
    }
    # the run's split, disjoint (that evaluation scores exactly it: test_checkpoints.py)
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["test"]) == round(0.2 * 24) and not set(splits["test"]) & set(splits["train"])


def test_default_digits_fast_dev_run_and_shared_split(tmp_path, monkeypatch):
    fit(tmp_path, "--trainer.fast_dev_run", "true")
    default = tmp_path / "data" / "recognition2d"
    assert len(list(default.glob("*/*.png"))) == 1797
    test_ids = (default / "test.txt").read_text().split()
    train_ids = set((default / "train.txt").read_text().split())
    assert len(test_ids) == len(digit_split()["test"]) and not train_ids & set(test_ids)
    # prepare_data is idempotent: a second datamodule reuses the folder and generates nothing
    # (a regeneration would lose its rename to the folder in place and leave no mark on it)
    before = snapshot(tmp_path / "data")

    def write_default(self, folder):
        raise AssertionError(f"the default was generated again into {folder}")

    monkeypatch.setattr(RecognitionDataModule, "write_default", write_default)
    RecognitionDataModule(data_root=str(tmp_path / "data")).prepare_data()
    assert snapshot(tmp_path / "data") == before


def test_short_training_on_digits_learns(tmp_path, monkeypatch, capfd):
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    run = fit(tmp_path, "--trainer.max_epochs", "3", "--data.data_root", "relative_data")
    printed = capfd.readouterr()
    assert "Testing" not in printed.out + printed.err  # the progress bar is off for the evaluation too
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.9  # chance is 0.1; the full default run reaches ≥ 0.985
    ckpt = run / "checkpoints" / "best.ckpt"
    stored = torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"]["data_root"]
    assert stored == str(tmp_path / "here" / "relative_data")
    # so does the run's config.yaml, which --config reuses from any folder
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]
    assert saved["data_root"] == stored
    monkeypatch.chdir(tmp_path / "elsewhere")  # the data root is the user's to say, never the checkpoint's
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_root", "../here/relative_data", "--out", "again"])
    assert (
        json.loads((tmp_path / "elsewhere" / "again" / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    )
    assert not (tmp_path / "elsewhere" / "relative_data").exists()


def test_a_run_from_inside_the_data_folder_writes_nothing_there(tmp_path, image_folder, monkeypatch, capsys):
    """The task configs' relative ``runs/<task>``, from inside the data folder, would put the
    run's files there: the next run listed ``runs`` as a class folder. One line, nothing written."""
    before = snapshot(image_folder)
    monkeypatch.chdir(image_folder)
    with pytest.raises(SystemExit):
        main(["fit", "--config", CONFIG, "--data.data_dir", ".", "--trainer.max_epochs", "1"])
    err = capsys.readouterr().err.strip()
    runs = image_folder / "runs" / "recognition2d"
    assert f"--trainer.default_root_dir {runs}: inside the data folder {image_folder}, which is only read" in err
    assert len(err.splitlines()) == 1 and snapshot(image_folder) == before


def test_a_file_given_as_default_root_dir_is_one_line_naming_the_option(tmp_path, image_folder, capsys):
    """``--trainer.default_root_dir`` naming a file ended the run, after its data was read, in
    ``[Errno 17] File exists`` naming no option; the file is left as it was."""
    taken = tmp_path / "notes.txt"
    taken.write_text("the user's")
    with pytest.raises(SystemExit):
        main(["fit", "--config", CONFIG, "--data.data_dir", str(image_folder), f"--trainer.default_root_dir={taken}"])
    err = capsys.readouterr().err.strip()
    assert f"--trainer.default_root_dir {taken}: is a file; expected a folder" in err and len(err.splitlines()) == 1
    assert taken.read_text() == "the user's"


def test_corrupt_images_are_named_together_even_the_first(tmp_path, image_folder):
    """The folder's first file (sorted) being bad does not stop it alone, by deciding the channels."""
    for name in ("cat/-first.png", "dog/broken.png"):
        (image_folder / name).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(BadFileError, match="2 of 26 images") as caught:
        fit(tmp_path, "--data.data_dir", str(image_folder), "--trainer.fast_dev_run", "true", "--data.batch_size", "32")
    assert "-first.png" in str(caught.value) and "broken.png" in str(caught.value)


@pytest.mark.parametrize("name", ["dog/broken.png", "cat/-first.png"])
def test_corrupt_image_can_be_skipped_with_a_warning(tmp_path, image_folder, name):
    (image_folder / name).write_bytes(b"garbage")
    dm = RecognitionDataModule(data_dir=str(image_folder), on_bad_file="skip", test_fraction=0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
        sizes = [len(ds) for ds in dm.datasets.values()]
    assert any(name.split("/")[1] in str(w.message) for w in caught)
    assert sum(sizes) == 24


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.data_dir=.*nowhere"):
        RecognitionDataModule(data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        RecognitionDataModule(data_dir=str(tmp_path / "empty"))
    (tmp_path / "empty" / "cats").mkdir()
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="cats: class folder holds no file"):
        RecognitionDataModule(data_dir=str(tmp_path / "empty"))


def test_a_folder_of_one_class_is_one_line_pointing_one_folder_deeper(tmp_path, image_folder, capsys):
    """The class folders one level too deep (``wrap/images/<class>/...``) read as one class:
    torchmetrics refused num_classes=1 with an 86-line traceback."""
    wrap = tmp_path / "wrap"
    wrap.mkdir()
    image_folder.rename(wrap / "images")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--data.data_dir", str(wrap), "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.strip().endswith("model.num_classes=1 (the data's one class, 'images'): a classifier tells 2 or more "
                                "classes apart; if that is the folder holding the class folders, give it as "
                                "--data.data_dir")  # fmt: skip


def test_bad_config_values_name_the_key(tmp_path, image_folder):
    with pytest.raises(ValueError, match="data.on_bad_file"):
        RecognitionDataModule(data_dir=str(image_folder), on_bad_file="ignore")
    with pytest.raises(ValueError, match="data.channels"):
        RecognitionDataModule(data_dir=str(image_folder), channels=2)


def test_every_split_and_a_raw_file_are_normalised_as_the_datamodule_says(image_folder):
    """Each split's images and predict's reading of a file: resized [0, 1] pixels normalised
    by ``input_normalisation`` (to [-1, 1]), what the network trained on and export declares."""
    dm = RecognitionDataModule(data_dir=str(image_folder), image_size=16, augment=False)
    dm.setup("fit")
    norm = dm.input_normalisation
    assert (norm["mean"], norm["std"]) == ([0.5] * 3, [0.5] * 3)
    for stage in ("train", "val", "test"):
        dataset = dm.datasets[stage]
        image, _ = dataset[0]
        pixels = read_image(image_folder / dataset.ids[0], 3, (16, 16))
        torch.testing.assert_close(image, (pixels - 0.5) / 0.5)
        torch.testing.assert_close(dm.read_input(image_folder / dataset.ids[0]).sample, image)


def test_gray_channels_inferred_from_files(tmp_path):
    folder = make_image_folder(tmp_path / "g", per_class=3)
    for p in folder.rglob("*.*"):
        from PIL import Image

        Image.open(p).convert("L").save(p)
    assert RecognitionDataModule(data_dir=str(folder)).in_channels == 1


@pytest.mark.parametrize("mode", ["LA", "I;16B"])
def test_gray_images_with_alpha_or_big_endian_16_bit_are_gray(tmp_path, mode):
    """Grey with an alpha band (scans and icons saved with transparency) and big-endian 16-bit
    TIFFs are grey, and read as grey values, but counted as colour: the run took 3 channels,
    each the same."""
    import numpy as np
    import tifffile
    from PIL import Image

    folder = make_image_folder(tmp_path / "g", per_class=3)
    for p in folder.rglob("*.*"):
        gray = np.asarray(Image.open(p).convert("L"))
        p.unlink()
        if mode == "LA":
            Image.fromarray(gray).convert("LA").save(p.with_suffix(".png"))
        else:
            tifffile.imwrite(p.with_suffix(".tif"), gray.astype(">u2") * 257, byteorder=">")
    assert {Image.open(p).mode for p in folder.rglob("*.*")} == {mode}
    assert RecognitionDataModule(data_dir=str(folder)).in_channels == 1


def test_one_grayscale_image_sorting_first_leaves_a_colour_folder_in_colour(tmp_path):
    """The channels came from the first file alone: one grayscale image first in a colour
    folder made the run train (and export) on one channel."""
    from PIL import Image

    folder = make_image_folder(tmp_path / "c", per_class=30)
    first = sorted(folder.rglob("*.*"))[0]
    Image.open(first).convert("L").save(first)
    assert Image.open(first).mode == "L"
    assert RecognitionDataModule(data_dir=str(folder)).in_channels == 3


def test_the_last_class_folders_are_probed_for_colour_too(tmp_path):
    """Channels are read from files spread from the first to the last: of 102 files sorted by
    class, the first 64 were taken, all of two grayscale classes, and the colour class after
    them was never looked at."""
    from PIL import Image

    folder = make_image_folder(tmp_path / "c", per_class=34)
    for path in [*folder.glob("cat/*"), *folder.glob("dog/*")]:
        Image.open(path).convert("L").save(path)
    assert RecognitionDataModule(data_dir=str(folder)).in_channels == 3


def test_evaluate_errors_name_the_file(tmp_path, capsys):
    bogus = tmp_path / "x.ckpt"
    bogus.write_bytes(b"nope")
    for path in (bogus, tmp_path / "missing.ckpt"):
        with pytest.raises(SystemExit):
            main(["evaluate", "--ckpt", str(path)])
        assert str(path) in capsys.readouterr().err


def test_make_rejects_an_unknown_task():
    env = {**os.environ, "MAKEFLAGS": ""}
    result = subprocess.run(["make", "-s", "train", "TASK=nope"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "nope" in result.stderr and "recognition2d" in result.stderr


def test_print_config_and_module_entry_point(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--trainer.max_epochs", "7", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "max_epochs: 7" in printed and "RecognitionModule" in printed and "filename: best" in printed
    result = subprocess.run([sys.executable, "-m", "cnnsuite", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "fit" in result.stdout and "evaluate" in result.stdout


def test_class_names_must_match_num_classes():
    from cnnsuite.training.classification import ClassificationModule

    with pytest.raises(ValueError, match=r"model.class_names has 2 names but model.num_classes=3"):
        ClassificationModule(num_classes=3, class_names=["cat", "dog"])
    # predictions keyed by class name would merge the two
    with pytest.raises(ValueError, match=r"^model.class_names names 'cat' more than once; expected one name a class$"):
        ClassificationModule(num_classes=3, class_names=["cat", "dog", "cat"])
    assert ClassificationModule(num_classes=3).class_names == ["0", "1", "2"]


def test_a_confusion_matrix_is_kept_and_drawn_within_bounds_of_the_class_count(tmp_path):
    """Its state is classes² counts: past ``confusion_max_classes`` (a checkpoint's say) none is
    kept. Past ``confusion_named_classes`` it is drawn without names or counts at the size of
    that many classes, not half an inch a class."""
    from PIL import Image

    many = RecognitionModule(num_classes=RecognitionModule.confusion_max_classes + 1)
    many.configure_metrics("test")
    assert many.test_confusion is None and many.plot_confusion(tmp_path) == []
    named = RecognitionModule.confusion_named_classes
    sizes = []
    for classes in (named, 3 * named):
        model = RecognitionModule(num_classes=classes)
        model.configure_metrics("test")
        target = torch.arange(classes)
        model.update_confusion(torch.eye(classes)[target.roll(1)], target)
        (tmp_path / str(classes)).mkdir()
        (plot,) = model.plot_confusion(tmp_path / str(classes))
        sizes.append(Image.open(plot).size)
    assert max(sizes[1]) <= max(sizes[0])
