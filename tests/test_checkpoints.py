"""A checkpoint is untrusted input, and evaluation scores the run's own split on the data
the model learnt: what may be rebuilt from a checkpoint, and what is refused."""

import collections
import json
import pickle
import re
import shutil
import sys
import warnings

import pytest
import torch
import yaml
from conftest import fit, make_image_folder, task_config
from jsonargparse import ArgumentParser
from PIL import Image

from cnnsuite.cli import main
from cnnsuite.errors import ConfigError
from cnnsuite.training.classification import ClassificationModule
from cnnsuite.trust.checkpoint import rebuild
from cnnsuite.trust.picklescan import MAX_COLLIDING
from cnnsuite.use.evaluate import evaluate
from cnnsuite.use.predict import Predictor


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short recognition2d run on a user folder: ``(image folder, run folder)``."""
    tmp = tmp_path_factory.mktemp("trained")
    folder = make_image_folder(tmp / "images", per_class=10)
    run = fit("recognition2d", tmp, "--data.data_dir", str(folder), "--data.batch_size", "8",
              "--trainer.max_epochs", "1", "--evaluate", "false")  # fmt: skip
    return folder, run


def tampered(src, dst, edit):
    """A copy of checkpoint ``src`` at ``dst`` with ``edit(checkpoint)`` applied."""
    checkpoint = torch.load(src, weights_only=True)
    edit(checkpoint)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, dst)
    return dst


@pytest.mark.parametrize(
    "entry, name",
    [
        ("datamodule", "os.makedirs"),  # called with the "hyperparameters" as arguments, it would make a folder
        ("datamodule", "cnnsuite.__main__.main"),  # importing cnnsuite.__main__ alone runs the CLI
        ("datamodule", "cnnsuite.tasks.recognition2d.module.RecognitionModule"),  # ours, but not a datamodule
        ("model", "pathlib.Path"),
    ],
)
def test_a_checkpoint_naming_a_foreign_class_is_refused_before_anything_is_called(trained, tmp_path, entry, name):
    _, run = trained
    marker = tmp_path / "made_by_the_checkpoint"

    def edit(checkpoint):
        checkpoint["cnnsuite_classes"][entry] = name
        checkpoint["datamodule_hyper_parameters"] = {"name": str(marker)}

    evil = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "evil.ckpt", edit)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(evil)) == []  # weights_only alone lets it in
    with pytest.raises(ValueError, match=rf"evil.ckpt: names '{name}' as its Task(Data)?Module; refused"):
        evaluate(evil, tmp_path / "out")
    assert not marker.exists()


def test_resuming_from_a_checkpoint_that_names_a_foreign_model_is_refused(trained, tmp_path, capsys):
    folder, run = trained

    def edit(checkpoint):
        checkpoint["hyper_parameters"]["_class_path"] = "collections.OrderedDict"

    evil = tampered(run / "checkpoints" / "last.ckpt", tmp_path / "evil.ckpt", edit)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "tasks/recognition2d/config.yaml", "--data.data_dir", str(folder),
              "--trainer.default_root_dir", str(tmp_path / "runs"), "--ckpt_path", str(evil)])  # fmt: skip
    assert exit_info.value.code == 2
    assert "names 'collections.OrderedDict' as its TaskModule; refused" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_damaged_checkpoint_is_named_in_one_line(trained, tmp_path, capsys):
    folder, _ = trained
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(SystemExit):
        main(["fit", "--config", "tasks/recognition2d/config.yaml", "--data.data_dir", str(folder),
              "--trainer.default_root_dir", str(tmp_path / "runs"), "--ckpt_path", str(damaged)])  # fmt: skip
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"cnnsuite fit: error: {damaged}: cannot load")


def test_evaluation_scores_the_split_inside_the_checkpoint(trained, tmp_path):
    folder, run = trained
    saved = json.loads((run / "splits.json").read_text())
    # The checkpoint travels alone, and the folder grows: a split re-derived from the seed
    # and today's files would move some of the run's training images into the test set.
    ckpt = shutil.copy(run / "checkpoints" / "best.ckpt", tmp_path / "copied.ckpt")
    grown = shutil.copytree(folder, tmp_path / "grown")
    make_image_folder(tmp_path / "extra", per_class=10, seed=1)
    for image in (tmp_path / "extra").rglob("*.*"):
        shutil.copy(image, grown / image.parent.name / f"new_{image.name}")

    model, datamodule = rebuild(ckpt, data={"data_dir": grown})
    assert datamodule.splits == saved and not datamodule.tests_other_data
    metrics = evaluate(ckpt, tmp_path / "out", data={"data_dir": grown})
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"{len(saved['test'])} test samples" in report and "test/acc" in metrics


def test_a_checkpoint_without_a_split_tests_its_folder_whole_unless_the_run_folder_has_it(trained, tmp_path):
    folder, run = trained

    def drop_split(checkpoint):
        del checkpoint["RecognitionDataModule"]

    stripped = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "a" / "b" / "stripped.ckpt", drop_split)
    _, datamodule = rebuild(stripped, tmp_path / "a", data={"data_dir": folder})
    assert datamodule.tests_other_data and datamodule.splits["train"] == []
    # a checkpoint written before the split travelled inside it: its run folder's splits.json
    shutil.copy(run / "splits.json", tmp_path / "a" / "splits.json")
    _, datamodule = rebuild(stripped, tmp_path / "a", data={"data_dir": folder})
    assert datamodule.splits == json.loads((run / "splits.json").read_text()) and not datamodule.tests_other_data


def test_a_checkpoint_does_not_choose_the_folder_evaluation_reads(trained, tmp_path):
    """Where a run's data was is recorded, but never opened: the user says where it is."""
    folder, run = trained
    with pytest.raises(ValueError, match=rf"best.ckpt: its run read your own data; .* give --data.data_dir {folder}"):
        evaluate(run / "checkpoints" / "best.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_resume_keeps_the_checkpoint_split(trained, tmp_path):
    folder, run = trained
    saved = json.loads((run / "splits.json").read_text())
    resumed = fit("recognition2d", tmp_path, "--data.data_dir", str(folder), "--data.batch_size", "8",
                  "--data.seed", "7", "--trainer.max_epochs", "2", "--evaluate", "false",
                  "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))  # fmt: skip
    assert json.loads((resumed / "splits.json").read_text()) == saved
    state = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["RecognitionDataModule"]
    assert state["splits"] == saved


def test_data_that_no_longer_matches_the_model_is_refused(trained, tmp_path):
    folder, run = trained
    renamed = shutil.copytree(folder, tmp_path / "renamed")
    (renamed / "owl").rename(renamed / "bat")  # as many classes, another meaning for label 2

    ckpt = run / "checkpoints" / "best.ckpt"
    with pytest.raises(ValueError, match=r"renamed: its class bat is not among the 3 classes .*best.ckpt was trained "
                                         r"on \(cat, dog, owl\); evaluate it on a folder of those"):  # fmt: skip
        evaluate(ckpt, tmp_path / "out", data={"data_dir": renamed})
    # the same names in another order (a COCO file's category ids order them): said so
    from cnnsuite.trust.checkpoint import check_matches

    _, datamodule = rebuild(ckpt, None, {"data_dir": str(folder)})
    datamodule.class_names = ["dog", "cat", "owl"]
    with pytest.raises(ValueError, match=r"are the 3 classes best.ckpt was trained on, in another order"):
        check_matches(["cat", "dog", "owl"], None, datamodule, "best.ckpt")

    # several labels a sample, for a single-label model: the checkpoint's, not a data.multilabel the user gave
    several = shutil.copytree(folder, tmp_path / "several")
    rows = [f"{p.relative_to(several).as_posix()},{p.parent.name};dog" for p in sorted(several.rglob("*.png"))]
    (several / "labels.csv").write_text("\n".join(["image,label", *rows]) + "\n")
    said = r"line 2: 'cat;dog' holds 2 labels, but .*best.ckpt is of a single-label model: it gives one class a sample"
    with pytest.raises(ValueError, match=said):
        evaluate(ckpt, tmp_path / "out", data={"data_dir": several})
    # a typo is named as one, not as a setting the checkpoint holds
    with pytest.raises(ValueError, match=r"^unknown key data.data_dri: did you mean data.data_dir"):
        evaluate(ckpt, tmp_path / "out", data={"data_dri": str(folder)})
    # gray images for an RGB model are read as RGB, as predict reads them
    gray = shutil.copytree(folder, tmp_path / "gray")
    for image in gray.rglob("*.*"):
        Image.open(image).convert("L").save(image)
    _, datamodule = rebuild(ckpt, None, {"data_dir": str(gray)})
    assert datamodule.in_channels == 3 and datamodule.datasets["test"][0][0].shape[0] == 3


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_checkpoint_carrying_code_is_refused_in_one_line_and_never_run(tmp_path, capsys):
    torch.save({"state_dict": {}, "x": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt", str(tmp_path / "evil.ckpt")])
    err = capsys.readouterr()
    assert "pickled code ran" not in err.out
    message = err.err.strip()
    assert "\n" not in message and "evil.ckpt: cannot load as a checkpoint" in message and "GLOBAL" in message


def test_a_file_that_is_no_zip_archive_given_as_a_checkpoint_is_named_so(tmp_path, capsys):
    """A checkpoint is memory-mapped, which torch does for its zip format alone: a GeoTIFF, a
    pickle or a file in torch's legacy format was refused with torch's advice to save it with
    ``_use_new_zipfile_serialization=True``, which the user never wrote."""
    (tmp_path / "patch.ckpt").write_bytes(b"II*\x00" + bytes(64))
    torch.save({"state_dict": {}}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name in ("patch.ckpt", "legacy.ckpt"):
        with pytest.raises(SystemExit):
            main(["evaluate", "--ckpt", str(tmp_path / name)])
        message = capsys.readouterr().err.strip()
        assert "\n" not in message and "mmap" not in message, message
        assert f"{name}: cannot load as a checkpoint (not a zip archive as torch.save writes it" in message, message


# --- what a hand-made checkpoint can make each command do -------------------------------------


CONFIG = task_config("recognition2d")


def resume(folder, tmp_path, ckpt, *extra):
    return main(["fit", "--config", CONFIG, "--data.data_dir", str(folder),
                 "--trainer.default_root_dir", str(tmp_path / "runs"), "--data.batch_size", "8",
                 "--trainer.enable_progress_bar", "false", "--evaluate", "false",
                 "--ckpt_path", str(ckpt), *extra])  # fmt: skip


def test_a_resumed_run_keeps_the_model_and_data_settings_it_trained_with(trained, tmp_path):
    """``--data.image_size`` given to a resumed run trained its last epochs on other inputs than
    its first, silently; the run's settings are the checkpoint's, and what the command line
    said otherwise is named once. Where the data is and how it loads stay the command's."""
    folder, run = trained
    recorded = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["datamodule_hyper_parameters"]
    with pytest.warns(UserWarning, match=r"; --model.init_args.dropout, --data.image_size given on the command line"):
        resume(folder, tmp_path, run / "checkpoints" / "last.ckpt", "--trainer.max_epochs", "2",
               "--data.image_size", str(recorded["image_size"] + 4), "--model.init_args.dropout", "0.3",
               "--data.num_workers", "0")  # fmt: skip
    resumed = torch.load(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["datamodule_hyper_parameters"]["image_size"] == recorded["image_size"]
    assert resumed["datamodule_hyper_parameters"]["num_workers"] == 0


def test_print_config_of_a_resumed_run_shows_the_checkpoints_settings(trained, tmp_path, capsys):
    """``--print_config`` prints before the CLI resumes: it showed ``--data.image_size`` and
    ``--model.dropout`` as given, where the run takes the checkpoint's. It prints what will run."""
    folder, run = trained
    recorded = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["datamodule_hyper_parameters"]
    with pytest.raises(SystemExit):
        main(["fit", "--config", task_config("recognition2d"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
              "--data.data_dir", str(folder), "--data.image_size", str(recorded["image_size"] + 4),
              "--model.dropout", "0.3", "--print_config"])  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["image_size"] == recorded["image_size"]
    assert printed["model"]["init_args"]["dropout"] == 0.0


def test_resuming_another_tasks_checkpoint_is_one_line_naming_both_tasks(trained, tmp_path, capsys):
    """A localization2d checkpoint resumed with recognition2d's config passed every check (the
    same ten digit classes) and trained a model on batches it does not take."""
    _, run = trained
    error = one_line_error(["fit", "--config", task_config("localization2d"), "--ckpt_path",
                            str(run / "checkpoints" / "last.ckpt"), "--data.data_root", str(tmp_path / "data"),
                            "--trainer.default_root_dir", str(tmp_path / "runs")], capsys)  # fmt: skip
    assert error.endswith("last.ckpt: a checkpoint of recognition2d, where this run's data is localization2d's; "
                          "resume it with its own task's config")  # fmt: skip
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("module", ["this", "bundled"])
def test_resuming_never_imports_a_class_path_the_checkpoint_names(trained, tmp_path, monkeypatch, capsys, module):
    """Lightning's own resume hands the hyper-parameters to jsonargparse, which imports a plain
    ``class_path``: ``this`` printed the Zen of Python, a ``bundled.py`` beside the file ran."""
    folder, run = trained
    (tmp_path / "bundled.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nclass Model: pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    def edit(checkpoint):
        hparams = checkpoint["hyper_parameters"]
        hparams.pop("_class_path", None)
        hparams["class_path"] = f"{module}.Model"

    evil = tampered(run / "checkpoints" / "last.ckpt", tmp_path / "model.ckpt", edit)
    with pytest.raises(SystemExit) as exit_info:
        resume(folder, tmp_path, evil)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "model.ckpt: its hyper_parameters do not fit RecognitionModule: unknown argument 'class_path'" in err
    assert "Beautiful is better than ugly" not in out and not (tmp_path / "ran").exists()


def test_resuming_never_reads_the_backbone_weights_file_the_checkpoint_names(trained, tmp_path):
    folder, run = trained
    planted = tmp_path / "planted.ckpt"
    planted.write_bytes(b"not a checkpoint: reading it would fail the run")

    def edit(checkpoint):
        checkpoint["hyper_parameters"]["backbone_weights"] = str(planted)

    ckpt = tampered(run / "checkpoints" / "last.ckpt", tmp_path / "resumed" / "last.ckpt", edit)
    resume(folder, tmp_path, ckpt, "--trainer.max_epochs", "2")
    assert torch.load(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def set_path(path, value):
    """An edit that puts ``value`` at the key path ``path`` of a checkpoint."""

    def edit(checkpoint):
        *parents, last = path
        target = checkpoint
        for key in parents:
            target = target[key]
        target[last] = value

    return edit


def nan_weights(checkpoint):
    key = next(k for k in checkpoint["state_dict"] if k.endswith("weight"))
    checkpoint["state_dict"][key] = torch.full_like(checkpoint["state_dict"][key], float("nan"))


def wrong_shape(checkpoint):
    key = next(k for k in checkpoint["state_dict"] if k.endswith("weight"))
    checkpoint["state_dict"][key] = torch.zeros(3, 1)


def repeated_values(checkpoint):
    """A weight saved as a view of one stored value: a file of kilobytes passing for networks of
    gigabytes (widths raised with every weight so made)."""
    key = next(k for k in checkpoint["state_dict"] if k.endswith("weight"))
    checkpoint["state_dict"][key] = torch.zeros(1).expand(checkpoint["state_dict"][key].shape)


MALFORMED = {
    "activation as a class": (
        set_path(["hyper_parameters", "backbone_kwargs"], {"act": {"class_path": "torch.nn.ReLU", "init_args": {}}}),
        "its hyper_parameters do not build RecognitionModule",
    ),
    "unknown argument": (set_path(["hyper_parameters", "colour"], "red"), "unknown argument 'colour'"),
    # Lightning's own record of the model class must be the class the file rebuilds
    "hyper-parameters naming another model": (
        set_path(["hyper_parameters", "_class_path"], "cnnsuite.tasks.localization2d.module.LocalizationModule"),
        "its hyper-parameters name 'cnnsuite.tasks.localization2d.module.LocalizationModule', its classes",
    ),
    "wrong type": (set_path(["hyper_parameters", "num_classes"], "three"), 'key "num_classes"'),
    "hyper-parameters a list": (set_path(["hyper_parameters"], [1, 2]), "'hyper_parameters' must be a mapping"),
    "wrong shape": (wrong_shape, "its weights do not fit RecognitionModule: RuntimeError"),
    "values repeated": (repeated_values, "some repeat or overlap others; expected each value stored once"),
    "no state_dict": (lambda c: c.pop("state_dict"), "its 'state_dict' is missing"),
    "state_dict a string": (set_path(["state_dict"], "weights"), "its 'state_dict' is a str"),
    "NaN weights": (nan_weights, "non-finite weights (NaN or infinity)"),
    "damaged optimizer state": (set_path(["optimizer_states"], [{"state": {}, "param_groups": [{"lr": "x"}]}]),
                                "its optimizer state 0 is not one torch can resume", ("fit --ckpt_path",)),
    # what the fit restores past the weights, each one line before the run's folder is made
    "damaged rng state": (set_path(["rng_states", "torch"], torch.zeros(3, dtype=torch.uint8)),
                          "its rng_states cannot be resumed (RuntimeError", ("fit --ckpt_path",)),
    "damaged metric state": (set_path(["train_metric_states", "metrics"], {"acc": {"state": {"tp": 1}, "updates": 0}}),
                             "its train_metric_states cannot be resumed", ("fit --ckpt_path",)),
    "damaged loader place": (set_path(["loops", "fit_loop", "state_dict", "combined_loader"], [{"seed": "a"}]),
                             "its loops.fit_loop.state_dict.combined_loader cannot be resumed", ("fit --ckpt_path",)),
    "empty test split": (set_path(["RecognitionDataModule", "splits"], {"train": [], "val": [], "test": []}),
                         "its run's test split is empty: nothing to evaluate", ("evaluate",)),
    # predictions are keyed by class name: two classes of one name would merge
    "class named twice": (set_path(["hyper_parameters", "class_names"], ["cat", "cat", "dog"]),
                          "model.class_names names 'cat' more than once"),
    # (resuming takes the data's settings from the command line, not from the file)
    "datamodule arguments a list": (
        set_path(["datamodule_hyper_parameters"], ["x"]), "'datamodule_hyper_parameters' must be a mapping",
        ("evaluate", "predict"),
    ),
}  # fmt: skip


def commands(ckpt, folder, tmp_path):
    """Every command that loads a checkpoint, each writing a folder of its own under ``tmp_path / "out"``
    (a folder one command wrote is not another's to write over)."""
    out = tmp_path / "out"
    return {
        "evaluate": ["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(out / "evaluate")],
        "predict": ["predict", "--ckpt", str(ckpt), "--input", str(folder / "cat"), "--out", str(out / "predict")],
        "export": ["export", "--ckpt", str(ckpt), "--out", str(out / "model.onnx")],
        "inspect": ["inspect", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(out / "inspect")],
        "serve": ["serve", "--ckpt", str(ckpt), "--port", "8765"],
        "fit --ckpt_path": ["fit", "--config", CONFIG, "--data.data_dir", str(folder),
                            "--trainer.default_root_dir", str(out), "--ckpt_path", str(ckpt)],
        "validate --ckpt_path": ["validate", "--config", CONFIG, "--data.data_dir",
                                 str(folder), "--trainer.default_root_dir", str(out), "--ckpt_path", str(ckpt)],
        "--model.backbone_weights": ["fit", "--config", CONFIG, "--data.data_dir",
                                     str(folder), "--trainer.default_root_dir", str(out), "--trainer.max_epochs", "1",
                                     "--model.init_args.backbone_weights", str(ckpt)],
    }  # fmt: skip


def one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("cnnsuite ")]  # warnings may precede it
    assert exit_info.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_checkpoint_is_one_line_naming_it(trained, tmp_path, capsys, kind):
    folder, run = trained
    edit, expected, *names = MALFORMED[kind]
    ckpt = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "bad.ckpt", edit)
    for name in names[0] if names else ("evaluate", "predict", "fit --ckpt_path"):
        err = one_line_error(commands(ckpt, folder, tmp_path)[name], capsys)
        assert f"{ckpt}: " in err and expected in err, (name, err)
    assert not (tmp_path / "out").exists()


def corrupted(source, dst, start, end, flips=64, seed=0):
    """A copy of ``source`` with ``flips`` bytes between ``start`` and ``end`` inverted."""
    content = bytearray(source.read_bytes())
    rng = torch.Generator().manual_seed(seed)
    for at in torch.randint(start, min(end, len(content)), (flips,), generator=rng).tolist():
        content[at] ^= 0xFF
    dst.write_bytes(bytes(content))
    return dst


@pytest.mark.parametrize("kind", ["NaN weights", "damaged pickle", "truncated"])
def test_every_command_refuses_a_bad_checkpoint_in_one_line_and_writes_nothing(trained, tmp_path, capsys, kind):
    folder, run = trained
    source, ckpt = run / "checkpoints" / "best.ckpt", tmp_path / "bad.ckpt"
    if kind == "NaN weights":
        tampered(source, ckpt, nan_weights)
    elif kind == "damaged pickle":  # the zip's first entry is the pickled outline of the checkpoint
        corrupted(source, ckpt, 64, 2048)
    else:
        ckpt.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    for name, argv in commands(ckpt, folder, tmp_path).items():
        err = one_line_error(argv, capsys)
        assert str(ckpt) in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


@pytest.mark.parametrize("seed", range(3))
def test_random_corruption_gives_a_one_line_error_or_a_result(trained, tmp_path, capsys, seed):
    """Bytes flipped anywhere (mostly in the weights, where nothing checks them): each command
    either refuses the file in one line or runs through and writes strict JSON."""
    folder, run = trained
    source = run / "checkpoints" / "best.ckpt"
    ckpt = corrupted(source, tmp_path / "bad.ckpt", 0, source.stat().st_size, seed=seed)
    for name in ("evaluate", "predict", "inspect"):
        try:
            main(commands(ckpt, folder, tmp_path)[name])
        except SystemExit as exit_info:
            err = capsys.readouterr().err
            assert exit_info.code == 2 and "Traceback" not in err and str(ckpt) in err, (name, err)
    for written in (tmp_path / "out").rglob("*.json*"):
        for line in written.read_text().splitlines() if written.suffix == ".jsonl" else [written.read_text()]:
            json.loads(line, parse_constant=pytest.fail)


def test_the_checkpoint_does_not_decide_where_evaluation_writes_or_how_it_loads(tmp_path, monkeypatch):
    """A checkpoint of an embedded-default run names a ``data_root`` and a worker count: the
    default data is generated under the user's ``data_root`` (here the working folder's
    ``data/``), and the workers are the user's."""
    run = fit("recognition2d", tmp_path / "first", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
              "--trainer.limit_val_batches", "1", "--evaluate", "false")  # fmt: skip
    planted = tmp_path / "planted"

    def edit(checkpoint):
        checkpoint["datamodule_hyper_parameters"].update(data_root=str(planted), num_workers=3)

    ckpt = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "run" / "checkpoints" / "best.ckpt", edit)
    monkeypatch.chdir(tmp_path)
    _, datamodule = rebuild(ckpt)
    assert datamodule.root == (tmp_path / "data" / "recognition2d").resolve()
    assert datamodule.hparams.num_workers == "auto"  # the default, not the checkpoint's 3
    metrics = evaluate(ckpt, data={"num_workers": 0})
    assert not planted.exists() and (tmp_path / "data" / "recognition2d").is_dir() and "test/acc" in metrics
    assert (tmp_path / "run" / "evaluation" / "metrics.json").is_file()


def test_resuming_a_run_on_a_users_folder_without_it_or_on_other_classes_is_one_line(trained, tmp_path, capsys):
    """``--ckpt_path last`` with the data folder forgotten would read the config's embedded
    default, and a folder of other classes other data: each is one line before anything runs,
    and the run's ``splits.json`` (the record of what it trained on) is left as it was."""
    folder, run = trained
    root = tmp_path / "runs"
    shutil.copytree(run, root / "version_0")
    record = (root / "version_0" / "splits.json").read_bytes()
    common = ["fit", "--config", "tasks/recognition2d/config.yaml", "--trainer.default_root_dir", str(root),
              "--trainer.max_epochs", "2", "--ckpt_path", "last"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(common)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("cnnsuite fit: error: ") and "its run read your own data" in line
    assert f"give --data.data_dir {folder}" in line
    other = make_image_folder(tmp_path / "other", per_class=4, classes=("ant", "bee"))
    with pytest.raises(SystemExit):
        main([*common, "--data.data_dir", str(other)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"cnnsuite fit: error: {other}: classes ['ant', 'bee'] do not match the 3 classes")
    # the run's classes, other files: refused before anything is written, not after a split of them was
    same_classes = make_image_folder(tmp_path / "same_classes", per_class=3, seed=5)
    with pytest.raises(SystemExit):
        main([*common, "--data.data_dir", str(same_classes)])
    assert (root / "version_0" / "splits.json").read_bytes() == record
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"cnnsuite fit: error: --ckpt_path {root / 'version_0'}") and "its split: " in line
    assert f"entries are not in {same_classes}" in line
    assert sorted(p.name for p in (root / "version_0").iterdir() if p.name.startswith("config")) == ["config.yaml"]


def test_the_runs_folder_with_a_training_file_gone_is_scored_on_its_test_split(trained, tmp_path):
    """The run's own folder less a training image still holds the run's whole test split: that
    is what is scored, never the folder whole (which would score the run's training images).
    A folder without the run's test files is other data, tested whole, and said to carry the
    names of the run's training samples where it does."""
    folder, run = trained
    saved = json.loads((run / "splits.json").read_text())
    shrunk = shutil.copytree(folder, tmp_path / "shrunk")
    (shrunk / saved["train"][0]).unlink()
    _, datamodule = rebuild(run / "checkpoints" / "best.ckpt", data={"data_dir": shrunk})
    assert datamodule.splits["test"] == saved["test"] and not datamodule.tests_other_data
    (shrunk / saved["test"][0]).unlink()
    with pytest.warns(UserWarning, match=r"tested whole as other data .* have the names of samples the run trained"):
        _, datamodule = rebuild(run / "checkpoints" / "best.ckpt", data={"data_dir": shrunk})
    assert datamodule.tests_other_data


def test_another_folder_holding_the_runs_test_files_is_evaluated_beside_the_runs_evaluation(trained, tmp_path):
    """A folder holding files of the names of the run's test split is scored on that split (the
    run's data, moved), but it may be other data whose files are named alike (EuroSAT's
    Forest_3.tif): its evaluation goes into ``evaluation-<folder>/``, and the run's own
    ``evaluation/`` (of the folder the run read) is never written over by it."""
    folder, trained_run = trained
    run = shutil.copytree(trained_run, tmp_path / "run")
    own = evaluate(run / "checkpoints" / "best.ckpt", data={"data_dir": folder})
    assert (run / "evaluation" / "metrics.json").is_file()
    before = (run / "evaluation" / "metrics.json").read_text()
    copy = shutil.copytree(folder, tmp_path / "alike")
    assert evaluate(run / "checkpoints" / "best.ckpt", data={"data_dir": copy}) == own
    assert (run / "evaluation-alike" / "metrics.json").is_file()
    assert (run / "evaluation" / "metrics.json").read_text() == before
    assert json.loads((run / "evaluation" / "evaluation.json").read_text())["data"] == str(folder)


def test_the_runs_own_folder_named_by_a_relative_path_is_the_runs_data(trained, tmp_path, monkeypatch):
    """``--data.data_dir images`` from the folder above it names the folder the run read (the
    checkpoint records it absolute): its test split is scored into the run's own ``evaluation/``,
    not as other data into ``evaluation-images/``."""
    folder, trained_run = trained
    run = shutil.copytree(trained_run, tmp_path / "run")
    recorded = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["datamodule_hyper_parameters"]
    assert recorded["data_dir"] == str(folder)
    monkeypatch.chdir(folder.parent)
    evaluate(run / "checkpoints" / "best.ckpt", data={"data_dir": folder.name})
    assert json.loads((run / "evaluation" / "evaluation.json").read_text())["data"] == str(folder)
    assert not list(run.glob("evaluation-*"))


def test_a_checkpoint_whose_data_settings_the_network_cannot_take_is_one_line(trained, tmp_path, capsys):
    """An edited ``image_size`` below the backbone's total stride: evaluate and predict name the
    file and the misfit in one line, as fit names a config's, not a convolution's traceback."""
    folder, run = trained

    def shrink(checkpoint):
        checkpoint["datamodule_hyper_parameters"]["image_size"] = 8

    small = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "small.ckpt", shrink)
    for command in (["evaluate", "--data.data_dir", str(folder)], ["predict", "--input", str(folder / "cat")]):
        with pytest.raises(SystemExit):
            main([command[0], "--ckpt", str(small), *command[1:], "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"cnnsuite {command[0]}: error: {small}: the data's samples")


def test_a_damaged_training_log_leaves_the_curves_out_not_the_evaluation(trained, tmp_path):
    """metrics.csv is a file of the run folder anyone may edit: a cell that is not a number is
    left out of the training curves, with a warning naming the file; the evaluation is written."""
    folder, run = trained
    copy = shutil.copytree(run, tmp_path / "run")
    log = copy / "metrics.csv"
    header = log.read_text().splitlines()[0]
    log.write_text(log.read_text() + ",".join(["abc"] * len(header.split(","))) + "\n")
    with pytest.warns(UserWarning, match=r"metrics.csv: \d+ cells are not numbers"):
        metrics = evaluate(copy / "checkpoints" / "best.ckpt", tmp_path / "out", data={"data_dir": folder})
    assert "test/acc" in metrics and (tmp_path / "out" / "report.md").is_file()
    # the rows that are numbers still draw the curves, and the report shows them
    assert "![training_curves](training_curves.png)" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "training_curves.png").stat().st_size > 0
    # NaN is no damage: a value undefined on an epoch's data (a class its validation split lacks)
    undefined = shutil.copytree(run, tmp_path / "undefined")
    columns = header.split(",")
    row = ["0" if c in ("epoch", "step") else "nan" for c in columns]
    (undefined / "metrics.csv").write_text(log.read_text().splitlines()[0] + "\n" + ",".join(row) + "\n")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        evaluate(undefined / "checkpoints" / "best.ckpt", tmp_path / "out2", data={"data_dir": folder})
    assert not [w for w in said if "not numbers" in str(w.message)]


def test_a_non_finite_number_among_a_checkpoints_arguments_is_refused_at_load(trained, tmp_path):
    """A NaN normalisation mean in the weights metadata passes every weight check and makes
    every prediction NaN: the file is refused at load, naming where the number is."""
    _, run = trained

    def poison(checkpoint):
        checkpoint["hyper_parameters"]["backbone_weights_meta"] = {"mean": [float("nan")] * 3, "std": [0.2] * 3}

    bad = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "nan.ckpt", poison)
    with pytest.raises(ValueError, match=r"nan.ckpt: its hyper_parameters hold a non-finite number .* at "
                                         r"backbone_weights_meta.mean.0"):  # fmt: skip
        Predictor(bad, accelerator="cpu")


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_non_finite_number_in_a_checkpoints_datamodule_state_is_refused_in_one_line(trained, tmp_path, capsys,
                                                                                      command):  # fmt: skip
    """What preprocessing learnt (a band's mean and spread) travels in the datamodule's state:
    a NaN there passed every check, made every prediction NaN and an export's JSON sidecar
    non-strict (``NaN``, which other parsers refuse). Every command refuses the file in one line."""
    folder, run = trained

    def poison(checkpoint):
        checkpoint["RecognitionDataModule"]["band_mean"] = torch.tensor([0.5, float("nan")])

    bad = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "nan-state.ckpt", poison)
    extra = {"predict": ["--input", str(folder / "cat")], "evaluate": ["--data.data_dir", str(folder)], "export": []}
    out = tmp_path / ("model.onnx" if command == "export" else "out")
    err = one_line_error([command, "--ckpt", str(bad), *extra[command], "--out", str(out)], capsys)
    assert f"{bad}: its datamodule state holds a non-finite number (NaN or infinity) at band_mean.1" in err
    assert not out.exists()


def test_a_shared_run_folder_cannot_make_a_command_write_where_its_links_lead(trained, tmp_path, capsys):
    """A run folder is shared with its checkpoint: one whose ``evaluation/report.md`` links to
    the user's ``~/.bashrc`` had evaluate overwrite it (predict, inspect and export likewise in
    their folders). Each command refuses a link where it writes, in one line, and writes nothing."""
    folder, run = trained
    shared = shutil.copytree(run, tmp_path / "shared", symlinks=True)
    victim, victim_dir = tmp_path / "bashrc", tmp_path / "home"
    victim.write_text("the user's")
    victim_dir.mkdir()
    cases = {
        "evaluate": (shared / "evaluation" / "report.md", victim, ["--data.data_dir", str(folder)]),
        "predict": (shared / "predictions", victim_dir, ["--input", str(folder / "cat")]),
        "inspect": (shared / "inspection" / "stages.md", victim, ["--data.data_dir", str(folder)]),
        "export": (shared / "export" / "model.onnx.json", victim, []),
    }
    for command, (link, target, extra) in cases.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        err = one_line_error([command, "--ckpt", str(shared / "checkpoints" / "best.ckpt"), *extra], capsys)
        assert f"{link}: a symbolic link where this command writes its output" in err, command
    assert victim.read_text() == "the user's" and not any(victim_dir.iterdir())
    assert not (shared / "export" / "model.onnx").exists()


def test_a_folder_of_the_users_own_given_as_out_is_not_written_over(trained, tmp_path, capsys):
    """``--out mydir`` holding the user's own ``predictions.jsonl`` or ``report.md``: predict,
    evaluate and inspect replaced them without a word. A folder given with ``--out`` must be new,
    empty, or one the command wrote before (its summary.json, evaluation.json, stages.json)."""
    folder, run = trained
    ckpt = str(run / "checkpoints" / "best.ckpt")
    mine = tmp_path / "mydir"
    mine.mkdir()
    for name in ("predictions.jsonl", "report.md", "stages.md"):
        (mine / name).write_text("keep")
    commands = {"predict": ["--input", str(folder / "cat")], "evaluate": ["--data.data_dir", str(folder)],
                "inspect": ["--data.data_dir", str(folder)]}  # fmt: skip
    for command, extra in commands.items():
        err = one_line_error([command, "--ckpt", ckpt, *extra, "--out", str(mine)], capsys)
        assert f"--out {mine}: holds files this command did not write (predictions.jsonl, report.md" in err
    assert sorted(p.name for p in mine.iterdir()) == ["predictions.jsonl", "report.md", "stages.md"]
    assert {(mine / name).read_text() for name in ("predictions.jsonl", "report.md", "stages.md")} == {"keep"}
    out = tmp_path / "out"  # new, then written again: the command's own
    for _ in range(2):
        main(["evaluate", "--ckpt", ckpt, "--data.data_dir", str(folder), "--out", str(out)])
    assert (out / "evaluation.json").is_file()


def test_evaluate_and_inspect_write_nothing_inside_the_data_folder(trained, capsys):
    """``--out`` inside the data folder: the next fit would list ``evaluation`` as a class
    folder of images (its plots), as it would a run's files; refused as fit refuses a run there."""
    folder, run = trained
    ckpt = str(run / "checkpoints" / "best.ckpt")
    for command in ("evaluate", "inspect"):
        out = folder / "cat" / "report"
        err = one_line_error([command, "--ckpt", ckpt, "--data.data_dir", str(folder), "--out", str(out)], capsys)
        assert f"--out {out}: inside the data folder {folder}, which is only read" in err, command
        assert not out.exists()


def test_a_command_stopped_midway_writes_its_folder_again(trained, tmp_path, monkeypatch):
    """An evaluation stopped after its metrics and plots, before its evaluation.json (Ctrl-C, a
    plot that fails), left a folder that the same command with the same ``--out`` refused as
    the user's own: the folder is stamped as the command starts."""
    import cnnsuite.use.evaluate

    folder, run = trained
    args = ["evaluate", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--data.data_dir", str(folder)]
    out = tmp_path / "out"

    def interrupted(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(cnnsuite.use.evaluate, "write_report", interrupted)
        with pytest.raises(KeyboardInterrupt):
            main([*args, "--out", str(out)])
    assert (out / "metrics.json").is_file() and not (out / "evaluation.json").exists()
    main([*args, "--out", str(out)])
    assert (out / "evaluation.json").is_file()


def test_a_checkpoint_outside_a_run_folder_is_evaluated_into_the_working_folder(trained, tmp_path, monkeypatch):
    """A checkpoint outside a run's ``checkpoints/`` folder (downloaded, say) has no run folder:
    its evaluation goes to ``./evaluation``, as predict's and inspect's outputs go to ``./``,
    not into the folder above the checkpoint's (before: ``~/evaluation`` for ``~/Downloads/x.ckpt``)."""
    folder, run = trained
    downloads, work = tmp_path / "downloads", tmp_path / "work"
    downloads.mkdir()
    work.mkdir()
    shutil.copy(run / "checkpoints" / "best.ckpt", downloads / "model.ckpt")
    monkeypatch.chdir(work)
    main(["evaluate", "--ckpt", str(downloads / "model.ckpt"), "--data.data_dir", str(folder)])
    assert (work / "evaluation" / "metrics.json").is_file() and not (tmp_path / "evaluation").exists()


def test_what_a_checkpoint_records_reaches_the_terminal_escaped(trained, tmp_path, capsys):
    """An error quoting a checkpoint's recorded data folder printed it raw: a hand-made file
    could colour the terminal or move its cursor (ANSI codes), or print a line of its choosing
    (a newline). A recorded value holding such characters is shown quoted, as a Python string."""
    _, run = trained
    recorded = "/x/\n\x1b[31mred\x1b[0m\x07"
    bad = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "ansi.ckpt",
                   set_path(["datamodule_hyper_parameters", "data_dir"], recorded))  # fmt: skip
    error = one_line_error(["evaluate", "--ckpt", str(bad), "--out", str(tmp_path / "out")], capsys)
    assert "\x1b" not in error and "\x07" not in error
    assert "--data.data_dir '/x/\\n\\x1b[31mred\\x1b[0m\\x07'" in error


def test_a_checkpoints_class_names_reach_the_terminal_on_one_line(trained, tmp_path, capsys):
    """The class names a checkpoint records are its own strings too: the errors naming the classes
    a model was trained on joined them raw, so a name holding a newline printed a line of the
    file's choosing. They are shown quoted, as the recorded data folder is."""
    folder, run = trained

    def rename(checkpoint):
        checkpoint["hyper_parameters"]["class_names"][0] = "FAKE\ncnnsuite evaluate: all good"

    bad = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "names.ckpt", rename)
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt", str(bad), "--data.data_dir", str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "all good" in err and "\ncnnsuite evaluate: all good" not in err, err


def test_a_checkpoints_sample_size_is_bounded_by_the_pixel_limit(trained, tmp_path, capsys, monkeypatch):
    """A checkpoint (untrusted input) sizes the samples it is given: an edited image_size of
    20,000 would have the fits check and every prediction allocate gigabytes. Samples hold no
    more pixels than a file may declare (CNNSUITE_MAX_PIXELS, serve's --max_pixels), so the
    operator's limit bounds a served checkpoint too; so does a detector's max_size."""
    from cnnsuite.tasks.detection2d.module import DetectionModule

    from cnnsuite.data.limits import ENV

    folder, run = trained

    def enlarge(checkpoint):
        checkpoint["datamodule_hyper_parameters"]["image_size"] = 20000

    large = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "large.ckpt", enlarge)
    with pytest.raises(SystemExit):
        main(["predict", "--ckpt", str(large), "--input", str(folder / "cat"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the data's samples (data.*) of shape (3, 20000, 20000) hold 400,000,000 pixels" in err
    monkeypatch.setenv(ENV, "1000")  # the operator's own limit, below the run's 32 x 32
    with pytest.raises(SystemExit):
        main(["predict", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(folder / "cat"),
              "--out", str(tmp_path / "out")])  # fmt: skip
    assert "over the limit of 1,000" in capsys.readouterr().err
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match=r"model.max_size=20000: images resized up to \(3, 20000, 20000\)"):
        DetectionModule(num_classes=3, in_channels=3, max_size=20000)


def test_a_checkpoints_widths_cannot_make_it_allocate_more_than_its_weights(trained, tmp_path, capsys, monkeypatch):
    """The networks a checkpoint's arguments describe are sized on the meta device before they
    are built: widths of 60 million weights in a file of 100 thousand are refused in one line,
    and the networks never built for real (they were allocated, then failed to load)."""
    folder, run = trained
    source = run / "checkpoints" / "best.ckpt"

    def widen(checkpoint):
        checkpoint["hyper_parameters"]["backbone_kwargs"]["channels"][-1] = 100_000

    wide = tampered(source, tmp_path / "wide.ckpt", widen)
    built = []
    real = ClassificationModule.configure_models
    monkeypatch.setattr(
        ClassificationModule, "configure_models", lambda self: built.append(torch.empty(0).is_meta) or real(self)
    )
    error = one_line_error(["predict", "--ckpt", str(wide), "--input", str(folder / "cat"),
                            "--out", str(tmp_path / "out")], capsys)  # fmt: skip
    assert re.search(r"wide.ckpt: its weights do not fit RecognitionModule: RuntimeError: .* size mismatch for "
                     r"backbone.* the shape in current model is torch.Size\(\[100000, ", error)  # fmt: skip
    assert built == [True]
    Predictor(source, accelerator="cpu")  # the run's own file: sized alike, then built
    assert built == [True, True, False]


def shared_lists(levels: int) -> list:
    """Lists each holding the next twice: a pickle stores each once, a reader walks 2^levels."""
    found: list = ["cat"]
    for _ in range(levels):
        found = [found, found]
    return found


def nested_lists(levels: int, inner: object = "cat") -> list:
    found: list = [inner]
    for _ in range(levels):
        found = [found]
    return found


def chained_lists(chains: int, levels: int) -> list:
    """``chains`` lists ``levels`` deep, each holding the one before at its bottom, all listed at
    the top: each is measured first where it is shallow, and met again far deeper."""
    found: list = []
    for _ in range(chains):
        found.append(nested_lists(levels, found[-1] if found else "cat"))
    return found


def write_pickle(path, pickled: bytes) -> None:
    """A file in torch's zip format whose ``data.pkl`` is ``pickled``."""
    import zipfile

    torch.save({}, path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, pickled if name.endswith("data.pkl") else content)


def keyed_by(key: tuple) -> bytes:
    """The pickle torch.save writes of ``{key: 1}`` (saved as ``[key, 1]``, two opcodes turned)."""
    import pickletools

    pickled = pickle.dumps([key, 1], protocol=2)  # as torch.save pickles what holds no tensor
    ops = list(pickletools.genops(pickled))
    data = bytearray(pickled)
    data[next(at for op, _, at in ops if op.name == "EMPTY_LIST")] = ord("}")
    data[[at for op, _, at in ops if op.name == "APPENDS"][-1]] = ord("u")
    return bytes(data)


def handed_again(kind: str, values: int = 500, keys: int = 1000, uses: int = 200) -> bytes:
    """A pickle of ``U = (7,) * values`` and ``C``, a ``kind`` holding ``(U, i)`` for ``keys``
    values of ``i``, then ``set(C)`` ``uses`` times over (6 bytes each): each hashes all of C's
    tuples. ``kind`` is how C is filled: "SETITEMS", "SETITEM", "APPEND" or "REDUCE" (a set
    made from a list)."""
    keyed = [b"h\x01M" + i.to_bytes(2, "little") + b"\x86" for i in range(keys)]
    held = {
        "SETITEMS": b"}q\x02(" + b"".join(k + b"K\x00" for k in keyed) + b"u",
        "SETITEM": b"}q\x02" + b"".join(k + b"K\x00s" for k in keyed),
        "APPEND": b"]q\x02" + b"".join(k + b"a" for k in keyed),
        "REDUCE": b"cbuiltins\nset\n](" + b"".join(keyed) + b"e\x85Rq\x02",
    }[kind]
    return (
        b"\x80\x02]q\x00(("
        + b"K\x07" * values
        + b"tq\x01"
        + held
        + b"cbuiltins\nset\nq\x03"
        + b"h\x03h\x02\x85R" * uses
        + b"e."
    )


def nested_tuples(arity: int, levels: int) -> tuple:
    found: tuple = ("a",)
    for _ in range(levels):
        found = (found,) * arity
    return found


@pytest.mark.parametrize(
    "pickled",
    [
        pytest.param(keyed_by(nested_tuples(2, 26)), id="a key of tuples each holding the next twice"),
        pytest.param(keyed_by(nested_tuples(4, 13)), id="four times (pickled as MARK ... TUPLE)"),
        pytest.param(  # U = (7,) * 1000; T = (U,) * 1000; {T: None} 200 times over, 3 bytes each
            b"\x80\x02}("
            + b"("
            + b"K\x07" * 1000
            + b"tq\x01N"
            + b"("
            + b"h\x01" * 1000
            + b"tq\x02N"
            + b"h\x02N" * 200
            + b"u.",
            id="a tuple of a million values used as a key again and again",
        ),
        pytest.param(  # U = (7,) * 500; L = [U] * 1000; set(L) 200 times over, 6 bytes each
            b"\x80\x02]q\x00("
            + b"("
            + b"K\x07" * 500
            + b"tq\x01"
            + b"]q\x02("
            + b"h\x01" * 1000
            + b"e"
            + b"cbuiltins\nset\nq\x03"
            + b"h\x03h\x02\x85R" * 200
            + b"e.",
            id="a list of tuples handed to set() again and again",
        ),
        # C alone comes to under the floor: only its references counted again refuse it
        pytest.param(handed_again("APPEND"), id="a list of tuples filled one at a time"),
    ],
)
def test_a_file_whose_tuples_read_far_larger_is_refused_before_torch_unpickles_it(tmp_path, pickled):
    """weights_only allows a mapping keyed by a tuple, which the unpickler hashes, all of it, at
    each use, inside ``torch.load``: under a kilobyte of tuples each holding the next twice took
    0.7 s at 26 levels (12 s at 30, hours at 40), and a tuple of a million values used as a key
    costs that million at every use. The pickle's opcodes are read first and the file refused."""
    from cnnsuite.trust.checkpoint import load_checkpoint

    write_pickle(tmp_path / "keyed.ckpt", pickled)
    with pytest.raises(ValueError, match=r"keyed.ckpt: cannot load as a checkpoint \(its tuples come to [\d,]+ "):
        load_checkpoint(tmp_path / "keyed.ckpt")


def test_a_file_whose_scan_meets_an_error_still_has_what_came_before_counted(tmp_path):
    """A mapping keyed by a tuple bomb, then a reference to nothing the pickle stored (torch.load fails
    there, with a KeyError, after hashing the bomb): the scan fails there too, and must still count the
    tuples read so far."""
    from cnnsuite.trust.checkpoint import load_checkpoint

    keyed = keyed_by(nested_tuples(2, 26))[2:-1]
    write_pickle(tmp_path / "keyed.ckpt", b"\x80\x02(" + keyed + b"h\xc9t.")
    with pytest.raises(ValueError, match=r"keyed.ckpt: cannot load as a checkpoint \(its tuples come to [\d,]+ "):
        load_checkpoint(tmp_path / "keyed.ckpt")


def test_a_file_in_torchs_legacy_format_has_its_tuples_read_too(tmp_path):
    """torch.load reads torch's format from before 1.6 too, pickles one after another: the
    object's comes fourth, after the magic number, the protocol version and the system's sizes."""
    from cnnsuite.trust.checkpoint import load_checkpoint

    torch.save({nested_tuples(2, 26): 1}, tmp_path / "keyed.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"keyed.ckpt: cannot load as a checkpoint \(its tuples come to [\d,]+ "):
        load_checkpoint(tmp_path / "keyed.ckpt")


def test_a_list_met_again_deeper_counts_its_depth_there():
    """Each list is measured once, where it is first met: one met again at the bottom of another
    chain nests as deep as both, which a later walk (jsonargparse, the JSON writer) recurses
    through, so chains of chains would pass Python's recursion limit unless counted there too."""
    from cnnsuite.errors import CheckpointError
    from cnnsuite.trust.checkpoint import MAX_DEPTH, check_walkable

    def chain(depth: int, bottom: list) -> list:
        for _ in range(depth):
            bottom = [bottom]
        return bottom

    shared = chain(MAX_DEPTH // 2 + 1, [])
    check_walkable([shared, shared], "kept.ckpt")
    with pytest.raises(CheckpointError, match=rf"deep.ckpt: its entries nest lists or mappings more than {MAX_DEPTH}"):
        check_walkable([shared, chain(MAX_DEPTH // 2, shared)], "deep.ckpt")


def test_a_checkpoint_of_a_long_split_is_walked_in_full_and_kept():
    """A split of millions of files holds as many values as it comes to: refused only for
    coming to many times more than it holds."""
    from cnnsuite.trust.checkpoint import EXPANSION_FLOOR, check_walkable

    names = [f"scan_{i}.nii.gz" for i in range(2 * EXPANSION_FLOOR)]
    check_walkable({"datamodule_state": {"splits": {"train": names, "val": [], "test": names[:10]}}}, "long.ckpt")
    # a list referenced over and over comes to its values at each reference, which the file holds once:
    # past the floor, 9 values a reference are kept, 33 refused; under it, kept
    check_walkable({"splits": [names[:32]] * 1000}, "long.ckpt")
    for length, refused in ((8, False), (32, True)):
        entries = {"splits": [names[:length]] * (2 * EXPANSION_FLOOR // length)}
        if refused:
            with pytest.raises(ValueError, match=r"long.ckpt: its entries come to [\d,]+ values when read in full"):
                check_walkable(entries, "long.ckpt")
        else:
            check_walkable(entries, "long.ckpt")


@pytest.mark.parametrize(
    "entry,value,said",
    [
        ("hyper_parameters", shared_lists(40), r"come to 3,298,53\d,\d{3},\d{3} values when read in full, where it"),
        ("datamodule_hyper_parameters", shared_lists(40), r"come to 3,298,53\d,\d{3},\d{3} values when read in full"),
        ("hyper_parameters", nested_lists(5000), "nest lists or mappings more than 64 deep"),
        ("loops", {"fit_loop": nested_lists(5000)}, "nest lists or mappings more than 64 deep"),
        ("hyper_parameters", chained_lists(30, 59), "nest lists or mappings more than 64 deep"),
    ],
)
def test_a_checkpoint_that_reads_far_larger_than_it_is_is_one_line(trained, tmp_path, capsys, entry, value, said):
    """A 2 KB file whose class names were 40 lists each holding the next twice: the arguments'
    check walked 2^40 values, a process grew past 6 GB before any check refused it. A list 5,000
    deep ended in a RecursionError's traceback. Both are refused as the checkpoint is loaded."""
    folder, run = trained

    def plant(checkpoint):
        if entry == "loops":
            checkpoint[entry] = value
        else:
            checkpoint[entry]["class_names"] = value

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # pickling the deep list recurses
    try:
        source = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "big.ckpt", plant)
    finally:
        sys.setrecursionlimit(limit)
    error = one_line_error(["predict", "--ckpt", str(source), "--input", str(folder / "cat"),
                            "--out", str(tmp_path / "out")], capsys)  # fmt: skip
    assert re.search(rf"big.ckpt: its entries {said}", error) and error.endswith(
        "expected a checkpoint written by cnnsuite fit"
    )


@pytest.mark.parametrize(
    "first,last,expected",
    [
        ("class 0", "class 19999", "its weights do not fit RecognitionModule"),
        ("class 0", 7, 'its hyper_parameters do not fit RecognitionModule: key "class_names"'),
        (["a"], "class 19999", "its hyper_parameters.class_names is a list of 20,000 items holding lists"),
    ],
)
def test_a_long_list_among_a_checkpoints_arguments_is_checked_by_its_typical_items(
    trained, tmp_path, capsys, monkeypatch, first, last, expected
):
    """jsonargparse checks a list in time quadratic in its length: 20,000 class names took
    minutes before anything was refused. It is handed a long list's first items and one of each
    other type, so a name of another type at the end is still named; a long list of lists is
    refused before it is handed over. 20,000 names of strings are refused by the weights."""
    folder, run = trained

    def many(checkpoint):
        names = [first, *(f"class {i}" for i in range(1, 19_999)), last]
        checkpoint["hyper_parameters"] |= {"class_names": names, "num_classes": len(names)}

    source = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "many.ckpt", many)
    handed = []
    parse = ArgumentParser.parse_object
    monkeypatch.setattr(
        ArgumentParser, "parse_object", lambda self, cfg, **kw: handed.append(cfg) or parse(self, cfg, **kw)
    )
    error = one_line_error(["predict", "--ckpt", str(source), "--input", str(folder / "cat"),
                            "--out", str(tmp_path / "out")], capsys)  # fmt: skip
    assert f"many.ckpt: {expected}" in error and error.count("many.ckpt") == 1, error
    checked = [cfg["args"]["class_names"] for cfg in handed if "class_names" in cfg.get("args", {})]
    assert all(len(names) <= 65 for names in checked) and bool(checked) == isinstance(first, str)


#: 2**61 - 1, the modulus of CPython's numeric hash: the ints k * P all hash to 0
HASH_MODULUS = (1 << 61) - 1


def ops(value) -> bytes:
    """The opcodes that push ``value`` (protocol 2, without the header and the STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def mapping_keyed(keys) -> bytes:
    """A pickle of ``{key: 0 for key in keys}``, written without building it (which would cost
    what the file is made to cost)."""
    return b"\x80\x02}(" + b"".join(ops(key) + b"K\x00" for key in keys) + b"u."


def called(name: bytes, items) -> bytes:
    """A pickle of ``name(list(items))``, ``name`` a global as ``module\\nname``."""
    return b"\x80\x02c" + name + b"\n](" + b"".join(ops(item) for item in items) + b"e\x85R."


def minus_ones(length: int) -> list[tuple]:
    """The 2**length tuples of -1 and -2: all of one hash, as hash(-1) == hash(-2)."""
    import itertools

    return list(itertools.product((-1, -2), repeat=length))


#: ``torch._tensor._rebuild_from_type_v2(func, new_type, args, state)``, which weights_only allows
#: and which calls ``func(*args)``, any allowed global: memoised at 1, ``builtins.complex`` at 2
REBUILT = b"ctorch._tensor\n_rebuild_from_type_v2\nq\x01c__builtin__\ncomplex\nq\x02"


def rebuilt(func: bytes, args: bytes) -> bytes:
    """The opcodes of ``_rebuild_from_type_v2(func, func, args, {})``, its global memoised at 1."""
    return b"h\x01(" + func + func + args + b"}tR"


COLLIDING = [k * HASH_MODULUS for k in range(1, 2001)]


def updated_from_pairs(opening: bytes, closing: bytes) -> bytes:
    """A pickle of an OrderedDict whose attributes are updated (``BUILD``) from 40 lists or tuples
    of 50 pairs ``(k, i)`` each: keys of hash 0, pairs of different hashes."""
    pairs = (ops((k, i)) for i, k in enumerate(COLLIDING))
    return (
        b"\x80\x02ccollections\nOrderedDict\n)R"
        + b"".join(opening + b"".join(next(pairs) for _ in range(50)) + closing + b"b" for _ in range(40))
        + b"."
    )


MOST_COLLIDING = {k: 0 for k in COLLIDING[:MAX_COLLIDING]}


@pytest.mark.parametrize(
    "pickled",
    [
        pytest.param(mapping_keyed(COLLIDING), id="a mapping keyed by ints k * (2**61 - 1), all of hash 0"),
        pytest.param(mapping_keyed(minus_ones(8)), id="a mapping keyed by tuples of -1 and -2"),
        pytest.param(called(b"__builtin__\nset", COLLIDING), id="set() of a list of colliding ints"),
        pytest.param(
            called(b"collections\nOrderedDict", [(key, i) for i, key in enumerate(COLLIDING)]),
            id="OrderedDict() of pairs whose first items collide",
        ),
        pytest.param(
            b"\x80\x02c__builtin__\nset\n(" + b"".join(ops(k) for k in COLLIDING) + b"t\x85R.",
            id="set() of a tuple of colliding ints",
        ),
        pytest.param(
            mapping_keyed([complex(1000003 * k, -k) for k in range(1, 2001)]), id="complex keys, all of hash 0"
        ),
        pytest.param(mapping_keyed([("a", k) for k in COLLIDING]), id="tuples of one string and a colliding int"),
        pytest.param(mapping_keyed([(b"x", k) for k in COLLIDING]), id="tuples of equal bytes, each made anew"),
        pytest.param(  # L = [[], [], ...]; each inner list then given a colliding int and 0; OrderedDict(L)
            b"\x80\x02]("
            + b"".join(b"]q" + bytes([i]) for i in range(200))
            + b"eq\xc8"
            + b"".join(b"h" + bytes([i]) + b"(" + ops(COLLIDING[i]) + b"K\x00e" for i in range(200))
            + b"ccollections\nOrderedDict\nh\xc8\x85R.",
            id="OrderedDict() of list pairs given their items after they went into the list",
        ),  # fmt: skip
        pytest.param(  # OrderedDict() updated from 40 mappings of 2 colliding keys each (BUILD)
            b"\x80\x02ccollections\nOrderedDict\n)R"
            + b"".join(
                b"}(" + ops(COLLIDING[2 * i]) + b"K\x00" + ops(COLLIDING[2 * i + 1]) + b"K\x00ub" for i in range(40)
            )
            + b".",
            id="an OrderedDict's attributes updated from many mappings",
        ),  # fmt: skip
        pytest.param(  # OrderedDict([set([k, 0]), ...]): each set iterates as the pair k, 0
            b"\x80\x02ccollections\nOrderedDict\n]("
            + b"".join(
                (b"c__builtin__\nset\nq\x01" if i == 0 else b"h\x01") + b"](" + ops(k) + b"K\x00e\x85R"
                for i, k in enumerate(COLLIDING)
            )
            + b"e\x85R.",
            id="OrderedDict() of set pairs whose first items collide",
        ),  # fmt: skip
    ],
)
def test_a_file_of_keys_made_to_collide_is_refused_before_torch_unpickles_it(tmp_path, monkeypatch, pickled):
    """Keys of one hash make a mapping or set take time quadratic in their number to build, inside
    ``torch.load``: a mapping of ints ``k * (2**61 - 1)``, which all hash to 0, holds it for a time
    that grows with the square of the file's size. The pickle's opcodes are read first and the file
    refused: torch.load is never called."""
    from cnnsuite.trust.checkpoint import load_checkpoint

    def unreached(*args, **kwargs):
        raise AssertionError("torch.load was called")

    write_pickle(tmp_path / "keyed.ckpt", pickled)
    monkeypatch.setattr(torch, "load", unreached)
    with pytest.raises(
        ValueError, match=rf"keyed.ckpt: cannot load as a checkpoint \(over {MAX_COLLIDING} different keys"
    ):
        load_checkpoint(tmp_path / "keyed.ckpt")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([0] * 10_000, id="a list of ten thousand zeros"),
        pytest.param([tuple([3, 224, 224]) for _ in range(10_000)], id="ten thousand equal tuples, each pickled anew"),
        pytest.param({-1: 0, -2: 0, 0: 0, HASH_MODULUS: 0}, id="a few keys of one hash"),
        pytest.param(MOST_COLLIDING, id="as many keys of one hash as allowed"),
        pytest.param([f"scan_{i}.nii.gz" for i in range(20_000)], id="a long split"),
        pytest.param({i: (i, float(i), complex(i, 1)) for i in range(5_000)}, id="five thousand numbers"),
    ],
)
def test_a_file_of_equal_or_few_colliding_values_is_kept(tmp_path, value):
    """Equal values take one place in a mapping, so however many there are they count once, and
    chance collisions are few: real files hold lists of zeros and of equal shapes."""
    from cnnsuite.trust.untrusted import check_pickle

    torch.save(value, tmp_path / "kept.pt")
    check_pickle(tmp_path / "kept.pt", "kept")


def test_a_trained_checkpoint_and_its_optimizer_state_are_kept(trained):
    """A checkpoint a run wrote (weights, optimizer state, split, hyper-parameters) passes the scan."""
    from cnnsuite.trust.checkpoint import load_checkpoint

    _, run = trained
    for path in sorted(run.rglob("*.ckpt")):
        assert load_checkpoint(path)["state_dict"]


INTS = b"".join(b"M" + i.to_bytes(2, "little") for i in range(2000))  # 2,000 ints, 3 bytes each
KEYED = b"}q\x01(" + b"".join(b"M" + i.to_bytes(2, "little") + b"K\x00" for i in range(2000)) + b"u"
#: {"k0": 0, ... "k1999": 0}, memoised at 1: a state of 2,000 attributes; and the OrderedDict of a tensor's hooks
NAMED = b"}q\x01(" + b"".join(ops(f"k{i}") + b"K\x00" for i in range(2000)) + b"u"
HOOKS = b"ccollections\nOrderedDict\n)R"
#: _rebuild_parameter_with_state(None, False, hooks, (N, N)), its global memoised at 3
WITH_STATE = b"h\x03(N\x89" + HOOKS + b"h\x01h\x01\x86tR"
#: _rebuild_from_type_v2(_rebuild_parameter, Parameter, (None, False, hooks), N), its globals memoised at 3, 4, 5
FROM_TYPE = b"h\x03(h\x04h\x05(N\x89" + HOOKS + b"th\x01tR"


@pytest.mark.parametrize(
    "pickled",
    [
        pytest.param(  # L = list(range(2000)); set(L) a thousand times over, 6 bytes each
            b"\x80\x02]q\x01(" + INTS + b"ecbuiltins\nset\nq\x03" + b"h\x03h\x01\x85R" * 1000 + b".",
            id="set() of one list of ints again and again",
        ),
        pytest.param(  # _codecs.encode(S, "latin1") a thousand times over: a copy of S each time
            b"\x80\x02](X\xa0\x86\x01\x00"
            + b"a" * 100_000
            + b"q\x01X\x06\x00\x00\x00latin1q\x02"
            + b"c_codecs\nencode\nq\x03"
            + b"h\x03h\x01h\x02\x86R" * 1000
            + b"e.",
            id="_codecs.encode() of one string again and again",
        ),  # fmt: skip
        pytest.param(  # an OrderedDict's attributes updated from D a thousand times over (BUILD)
            b"\x80\x02ccollections\nOrderedDict\n)R" + KEYED + b"b" + b"h\x01b" * 1000 + b".",
            id="an OrderedDict's attributes updated from one mapping again and again",
        ),
    ],
)
def test_a_file_whose_calls_read_one_list_over_and_over_is_refused_before_torch_unpickles_it(
    tmp_path, monkeypatch, pickled
):
    """``set(L)`` reads all of ``L``, and a pickle can hand it the same list at every call for a
    few bytes: calling ``set()`` over and over on one long list costs ``torch.load`` the list's
    length at every call, and a set of that size kept for each. The calls' reads are counted from
    the opcodes first and the file refused: torch.load is never called."""
    from cnnsuite.trust.checkpoint import load_checkpoint

    def unreached(*args, **kwargs):
        raise AssertionError("torch.load was called")

    write_pickle(tmp_path / "called.ckpt", pickled)
    monkeypatch.setattr(torch, "load", unreached)
    with pytest.raises(ValueError, match=r"called.ckpt: cannot load as a checkpoint \(its calls are handed lists,"):
        load_checkpoint(tmp_path / "called.ckpt")


def test_the_scan_stops_reading_calls_once_they_pass_the_bound(tmp_path, monkeypatch):
    """An ``OrderedDict`` updated (``BUILD``) from one mapping of 2,000 keys 5,000 times over: the
    scan adds the mapping's keys at each update, so it must stop at the bound on what calls are
    handed, not count all ten million: the guard itself must stay linear in the file."""
    from cnnsuite.trust.picklescan import _Numbering
    from cnnsuite.trust.untrusted import TUPLE_FLOOR, check_pickle

    added = []
    add = _Numbering._add
    monkeypatch.setattr(_Numbering, "_add", staticmethod(lambda *args: added.append(1) or add(*args)))
    write_pickle(
        tmp_path / "built.ckpt", b"\x80\x02ccollections\nOrderedDict\n)R" + KEYED + b"b" + b"h\x01b" * 5000 + b"."
    )
    with pytest.raises(ValueError, match=r"built.ckpt \(its calls are handed lists, mappings and strings of over"):
        check_pickle(tmp_path / "built.ckpt", "built.ckpt")
    assert len(added) <= TUPLE_FLOOR + 2 * 2000, len(added)


@pytest.mark.parametrize(
    "pickled, reason",
    [
        pytest.param(  # .to(float64) of a view of one stored zero copies all it passes for
            b"\x80\x02ctorch._utils\n_rebuild_device_tensor_from_cpu_tensor\n(K\x00ctorch\nfloat64\nX\x03\x00\x00\x00cpu\x89tR.",
            r"it names torch._utils._rebuild_device_tensor_from_cpu_tensor, which torch.save never writes",
            id="a tensor moved from the CPU",
        ),
        pytest.param(  # torch.load reads a sparse tensor's indices in full
            b"\x80\x02ctorch._utils\n_rebuild_sparse_tensor\n(K\x00K\x00tR.",
            r"it names torch._utils._rebuild_sparse_tensor, which torch.save never writes",
            id="a sparse tensor",
        ),
        pytest.param(  # the same, through _rebuild_from_type_v2
            b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(ctorch._utils\n_rebuild_sparse_tensor\nctorch\nTensor\n"
            b"(K\x00K\x00t}tR.",
            r"it names torch._tensor._rebuild_from_type_v2",
            id="a sparse tensor through _rebuild_from_type_v2",
        ),
        pytest.param(  # torch.FloatTensor(n) allocates n values, which tolist() of a datamodule's state fills
            b"\x80\x02ctorch\nFloatTensor\nJ\x00\xa3\xe1\x11\x85R.",
            r"it names torch.FloatTensor, which torch.save never writes",
            id="FloatTensor(size)",
        ),
        pytest.param(  # the same as NEWOBJ: cls.__new__(cls, n)
            b"\x80\x02ctorch.cuda\nBoolStorage\nJ\x00\xa3\xe1\x11\x85\x81.",
            r"it calls torch.cuda.BoolStorage",
            id="cuda BoolStorage.__new__(size)",
        ),
        pytest.param(  # torch.Tensor(n) through _rebuild_from_type_v2
            b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(ctorch\nTensor\nctorch\nTensor\n(J\x00\xa3\xe1\x11t}tR.",
            r"it names torch._tensor._rebuild_from_type_v2, which torch.save never writes",
            id="Tensor(size) through _rebuild_from_type_v2",
        ),
        pytest.param(  # TypedStorage(n) allocates n values, which a tensor over it hands to tolist()
            b"\x80\x02ctorch.storage\nTypedStorage\nJ\x00\xa3\xe1\x11\x85R.",
            r"it names torch.storage.TypedStorage, which torch.save never writes",
            id="TypedStorage(size)",
        ),
        pytest.param(  # a sparse tensor type called with a size: its storage is none that the later checks can read
            b"\x80\x02ctorch.sparse\nFloatTensor\nJ\x00\xca\x9a;\x85R.",
            r"it names torch.sparse.FloatTensor, which torch.save never writes",
            id="sparse FloatTensor(size)",
        ),
        pytest.param(  # each hex encoding doubles what it is given: 30 of them make 1 KB a terabyte
            b"\x80\x02c_codecs\nencode\nq\x01"
            + b"h\x01" * 30
            + b"h\x01X\x00\x04\x00\x00"
            + b"a" * 1024
            + b"X\x06\x00\x00\x00latin1\x86R"
            + b"X\x03\x00\x00\x00hex\x86R" * 30
            + b".",
            r"it calls _codecs.encode\(\) other than on a string to latin1",
            id="_codecs.encode to hex, nested",
        ),
        pytest.param(  # utf-32 makes four bytes of each character given: only latin1 is how torch.save writes bytes
            b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00utf-32\x86R.",
            r"it calls _codecs.encode\(\) other than on a string to latin1",
            id="_codecs.encode to another codec, once",
        ),
        pytest.param(  # a nested tensor's sizes are a tensor of the file's, its values a view of its buffer
            b"\x80\x02ctorch._utils\n_rebuild_nested_tensor\n(K\x00K\x00K\x00K\x00tR.",
            r"it names torch._utils._rebuild_nested_tensor",
            id="a nested tensor",
        ),
    ],
)
def test_a_call_costing_what_the_file_does_not_hold_is_refused_before_torch_unpickles_it(
    tmp_path, monkeypatch, pickled, reason
):
    """Calls ``weights_only`` allows whose cost no byte of the file holds: ``bytearray(n)`` fills
    ``n`` bytes, ``_rebuild_device_tensor_from_cpu_tensor`` copies a view of one stored zero to
    gigabytes, and torch.load checks a sparse tensor's indices in full, all a view of one stored
    zero passes for. torch.save writes none of them for our files."""
    from cnnsuite.trust.checkpoint import load_checkpoint

    def unreached(*args, **kwargs):
        raise AssertionError("torch.load was called")

    write_pickle(tmp_path / "called.ckpt", pickled)
    monkeypatch.setattr(torch, "load", unreached)
    with pytest.raises(ValueError, match=r"called.ckpt: cannot load as a checkpoint \(" + reason):
        load_checkpoint(tmp_path / "called.ckpt")


def tensor_with_attribute() -> torch.Tensor:
    tensor = torch.zeros(2)
    tensor.note = "kept"  # torch.save writes a tensor with Python attributes through _rebuild_from_type_v2
    return tensor


def parameter_with_attribute() -> torch.nn.Parameter:
    parameter = torch.nn.Parameter(torch.zeros(2))
    parameter.note = "kept"
    return parameter


@pytest.mark.parametrize(
    "value, name",
    [
        pytest.param(torch.Size([3, 224, 224]), "torch.Size", id="torch.Size"),
        pytest.param(torch.device("cpu"), "torch.device", id="torch.device"),
        pytest.param(collections.Counter("abc"), "collections.Counter", id="Counter"),
        pytest.param(bytearray(b"ab"), "builtins.bytearray", id="bytearray"),
        pytest.param(tensor_with_attribute(), "torch._tensor._rebuild_from_type_v2", id="a tensor with attributes"),
        pytest.param(
            parameter_with_attribute(), "torch._utils._rebuild_parameter_with_state", id="a Parameter's state"
        ),
        pytest.param(torch.per_tensor_affine, "torch.per_tensor_affine", id="a quantization scheme"),
        pytest.param(torch.strided, "torch.serialization._get_layout", id="a layout"),
    ],
)
def test_a_value_weights_only_allows_but_torch_save_never_writes_for_our_files_is_refused_by_name(
    tmp_path, value, name
):
    """weights_only allows many globals, and each review found one more whose call costs what the file does
    not hold: the scan allows only those torch.save writes for our checkpoints and weight files, and names
    any other, as torch.save writes it, before torch.load runs."""
    from cnnsuite.trust.untrusted import check_pickle

    torch.save({"value": value}, tmp_path / "other.pt")
    torch.load(tmp_path / "other.pt", weights_only=True)  # allowed there
    with pytest.raises(ValueError, match=rf"other.pt \(it names {re.escape(name)}, which torch.save never writes"):
        check_pickle(tmp_path / "other.pt", "other.pt")


@pytest.mark.parametrize(
    "pickled, name",
    [
        pytest.param(  # _rebuild_wrapper_subclass(cls, dtype, size, ...) makes a tensor of a size the file names
            b"\x80\x02ctorch._utils\n_rebuild_wrapper_subclass\n(ctorch\nTensor\nctorch\nfloat32\n(J\x00\xca\x9a;ttR.",
            "torch._utils._rebuild_wrapper_subclass",
            id="_rebuild_wrapper_subclass",
        ),
        pytest.param(
            called(b"collections\nCounter", COLLIDING), "collections.Counter", id="Counter() of colliding ints"
        ),
        pytest.param(  # (globals, {_rebuild_from_type_v2(complex, complex, (1000003 * k, -k), {}): 0}): hash 0
            b"\x80\x02("
            + REBUILT
            + b"}("
            + b"".join(rebuilt(b"h\x02", ops(1000003 * k) + ops(-k) + b"\x86") + b"K\x00" for k in range(2, 2001))
            + b"ut.",
            "torch._tensor._rebuild_from_type_v2",
            id="complex keys made through _rebuild_from_type_v2",
        ),  # fmt: skip
        pytest.param(  # _rebuild_parameter_with_state(None, False, hooks, (N, N)) a thousand times over
            b"\x80\x02("
            + NAMED
            + b"ctorch._utils\n_rebuild_parameter_with_state\nq\x03]("
            + WITH_STATE * 1000
            + b"et.",
            "torch._utils._rebuild_parameter_with_state",
            id="a Parameter's state of pairs of one mapping again and again",
        ),
        pytest.param(  # bytearray(n) fills n bytes the file does not hold
            b"\x80\x02c__builtin__\nbytearray\nM\xe8\x03\x85R.", "builtins.bytearray", id="bytearray(size)"
        ),
        pytest.param(  # torch.load reads UserDict.Counter as collections.Counter (Python 2's names): each Counter
            # iterates as a pair k, 0, and OrderedDict() hashes their colliding first items
            b"\x80\x02ccollections\nOrderedDict\n]("
            + b"".join(
                (b"cUserDict\nCounter\nq\x01" if i == 0 else b"h\x01") + ops(k) + b"K\x00\x86\x85R"
                for i, k in enumerate(COLLIDING)
            )
            + b"e\x85R.",
            "UserDict.Counter",
            id="Counter under its Python 2 module's name",
        ),  # fmt: skip
        pytest.param(  # a storage type called with a size allocates it
            b"\x80\x02ctorch\nFloatStorage\nJ\x00\xa3\xe1\x11\x85R.", None, id="FloatStorage(size)"
        ),
    ],
)
def test_a_global_torch_save_never_writes_for_our_files_is_refused_by_name(tmp_path, monkeypatch, pickled, name):
    """A pickle naming a global outside the scan's allow-list is refused at that global, whatever it would
    do with it; a storage type, which torch.save names in its persistent ids, is refused when called."""
    from cnnsuite.trust.checkpoint import load_checkpoint

    def unreached(*args, **kwargs):
        raise AssertionError("torch.load was called")

    write_pickle(tmp_path / "other.ckpt", pickled)
    monkeypatch.setattr(torch, "load", unreached)
    said = rf"it names {re.escape(name)}, which torch.save never writes" if name else r"it calls torch.FloatStorage, "
    with pytest.raises(ValueError, match=r"other.ckpt: cannot load as a checkpoint \(" + said):
        load_checkpoint(tmp_path / "other.ckpt")


def test_a_sparse_tensor_torch_save_wrote_is_refused(tmp_path):
    """The scan refuses sparse tensors as torch.save writes them too: no weight file of ours holds one."""
    from cnnsuite.trust.untrusted import check_pickle

    torch.save({"w": torch.eye(3).to_sparse()}, tmp_path / "sparse.pt")
    with pytest.raises(ValueError, match=r"sparse.pt \(it names torch._utils._rebuild_sparse_tensor"):
        check_pickle(tmp_path / "sparse.pt", "sparse.pt")


@pytest.mark.parametrize("key", ["RecognitionDataModule", "optimizer_states"])
def test_a_tensor_repeating_its_stored_values_outside_the_weights_is_refused(trained, tmp_path, key):
    """A view of one stored zero passes for as many values as it declares: the datamodule's state
    is read with ``tolist()`` and an optimiser's state cast to its parameter's dtype, each holding
    all of them. Like the weights (``check_values_stored``), every tensor the file holds must
    store its values."""
    folder, run = trained

    def edit(checkpoint):
        entry = checkpoint[key] if key != "optimizer_states" else checkpoint[key][0]["state"]
        entry["repeated"] = torch.zeros(1).expand(1000)

    evil = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "evil.ckpt", edit)
    with pytest.raises(
        ValueError, match=r"evil.ckpt: its entries hold a tensor of 1,000 values where the file stores 4 "
    ):
        rebuild(evil, run, {"data_dir": str(folder)})


def test_a_tensor_repeating_its_stored_values_in_the_weights_metadata_is_refused(trained, tmp_path):
    """``load_state_dict`` reads the weights' ``_metadata`` (an attribute, set by ``BUILD``): each
    module's version, compared with a number, which for a view of one stored zero makes a tensor of
    every value it passes for. It is walked as the other entries are."""
    folder, run = trained

    def edit(checkpoint):
        checkpoint["state_dict"]._metadata[""] = {"version": torch.zeros(1).expand(1000)}

    evil = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "evil.ckpt", edit)
    with pytest.raises(
        ValueError, match=r"evil.ckpt: its entries hold a tensor of 1,000 values where the file stores 4 "
    ):
        rebuild(evil, run, {"data_dir": str(folder)})


def test_one_stored_tensor_named_over_and_over_outside_the_weights_is_refused(trained, tmp_path):
    """torch.save stores a tensor once however many keys name it: the datamodule's state is read
    with ``tolist()`` key by key, so 65,536 stored zeros named under 100 keys are 6.5 million
    values to read (under 1,000 keys, a 300 KB file held gigabytes). Each tensor comes to its
    values at every reference, its storage held once."""
    folder, run = trained
    zeros = torch.zeros(65536)

    def edit(checkpoint):
        checkpoint["RecognitionDataModule"].update({f"v{i}": zeros for i in range(100)})

    evil = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "evil.ckpt", edit)
    with pytest.raises(ValueError, match=r"evil.ckpt: its entries come to 6,\d{3},\d{3} values when read in full"):
        rebuild(evil, run, {"data_dir": str(folder)})


def test_a_quantized_tensor_in_a_checkpoint_is_one_line(trained, tmp_path, capsys):
    """A quantized tensor in the datamodule's state reached its ``tolist()``, which raises, as a
    traceback; no weight file of this suite holds one."""
    folder, run = trained

    def edit(checkpoint):
        checkpoint["RecognitionDataModule"]["mean"] = torch._make_per_tensor_quantized_tensor(
            torch.zeros(3, dtype=torch.uint8), 1.0, 0
        )

    evil = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "evil.ckpt", edit)
    for name in ("evaluate", "predict"):
        error = one_line_error(commands(evil, folder, tmp_path)[name], capsys)
        assert "evil.ckpt: cannot load as a checkpoint (it names torch._utils._rebuild_qtensor" in error, error


@pytest.mark.parametrize(
    "tensors",
    [
        pytest.param({"stages.0.weight": torch.zeros(1).expand(1_000_000)}, id="a view of one stored zero"),
        pytest.param(dict.fromkeys([f"stages.{i}.weight" for i in range(1000)], torch.zeros(1000)),
                     id="one tensor under many keys"),
        pytest.param({"conv1.weight": torch.zeros(1, 1, 1, 1).expand(64, 3, 7, 7),
                      "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, id="a published ResNet's names"),
    ],
)  # fmt: skip
def test_a_backbone_weights_file_repeating_its_stored_values_is_refused_before_they_are_checked(tmp_path, tensors):
    """Every value of a backbone's weights file is checked finite, each tensor in full: a view of
    one stored zero passed for a billion values (a 1.4 KB file held gigabytes), and one tensor
    stored once under many keys is checked at each. As for a checkpoint's state_dict, each value
    must be stored once."""
    from cnnsuite.training.transfer import backbone_state

    torch.save(tensors, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"weights.pt: its weights hold [\d,]+ bytes of values where the file stores"):
        backbone_state(tmp_path / "weights.pt")


def test_a_zip_of_compressed_records_is_refused_before_any_is_inflated(tmp_path, monkeypatch):
    """torch's zip reader inflates a deflated record: a file of kilobytes holds a pickle a thousand
    times larger, which the scan and ``torch.load`` read opcode by opcode. torch.save stores its
    records uncompressed: a compressed one is refused before it is read."""
    import zipfile

    from cnnsuite.trust.checkpoint import load_checkpoint

    def unreached(*args, **kwargs):
        raise AssertionError("a record was read")

    path = tmp_path / "deflated.ckpt"
    torch.save({}, path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            content = b"\x80\x02](" + b"N" * 100_000 + b"e." if name.endswith("data.pkl") else content
            archive.writestr(name, content, compress_type=zipfile.ZIP_DEFLATED)
    monkeypatch.setattr(torch, "load", unreached)
    monkeypatch.setattr(torch.serialization, "_open_zipfile_reader", unreached)
    with pytest.raises(ValueError, match=r"deflated.ckpt: cannot load as a checkpoint \(its record '.*' is compressed"):
        load_checkpoint(path)


def declaring(pickled: bytes, values: int) -> bytes:
    """``pickled`` (torch.save's of ``{"x": torch.zeros(4)}``) with its storage declared ``values`` long."""
    at = pickled.index(b"X\x03\x00\x00\x00cpu")
    return pickled[:at] + pickled[at:].replace(b"K\x04", b"J" + values.to_bytes(4, "little"), 1)


def test_a_storage_declared_larger_than_its_record_is_refused_before_torch_unpickles_it(tmp_path):
    """A checkpoint is memory-mapped: a storage declared larger than its record reads on into the
    records after it, so one-byte records each declared as the whole file pass for as many files.
    Each storage's record must be as large as declared, as torch.save writes it."""
    import zipfile

    from cnnsuite.trust.untrusted import check_pickle

    path = tmp_path / "declared.ckpt"
    torch.save({"x": torch.zeros(4), "pad": torch.ones(1000)}, path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, declaring(content, 900) if name.endswith("data.pkl") else content)
    mapped = torch.load(path, weights_only=True, mmap=True)["x"].untyped_storage().nbytes()
    assert mapped > 16  # weights_only alone maps more than the record holds
    with pytest.raises(ValueError, match=r"declared.ckpt \(its storage '0' is declared 3,600 bytes where its record "):
        check_pickle(path, "declared.ckpt")


def test_a_legacy_storage_declared_larger_than_the_file_is_refused_before_torch_unpickles_it(tmp_path):
    """torch's legacy format allocates each storage as its id declares, and fills only those the file
    lists: a 300-byte file listing none passed for 4 GB of weights."""
    import io
    import pickletools

    from cnnsuite.trust.untrusted import check_pickle

    path = tmp_path / "legacy.pt"
    torch.save({"x": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    stream = io.BytesIO(path.read_bytes())
    for _ in range(3):  # the magic number, the protocol version, the system's sizes
        pickle.load(stream)
    start = stream.tell()
    for _ in pickletools.genops(stream):  # the object's pickle, which names its storage
        pass
    head, pickled = path.read_bytes()[:start], path.read_bytes()[start : stream.tell()]
    path.write_bytes(head + declaring(pickled, 1_000_000_000) + pickle.dumps([], protocol=2))
    with pytest.raises(ValueError, match=r"legacy.pt \(its storages are declared 4,000,000,000 bytes, more than"):
        check_pickle(path, "legacy.pt")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8, torch.float64, torch.bool])
@pytest.mark.parametrize("legacy", [False, True])
def test_storages_as_torch_save_writes_them_are_kept(tmp_path, dtype, legacy):
    from cnnsuite.trust.untrusted import check_pickle

    tensors = {"w": torch.ones(3, 5, dtype=dtype), "view": torch.ones(10, dtype=dtype)[2:], "empty": torch.ones(0)}
    torch.save(tensors, tmp_path / "kept.pt", _use_new_zipfile_serialization=not legacy)
    check_pickle(tmp_path / "kept.pt", "kept.pt")


def test_a_set_used_over_and_over_costs_the_scan_little_each_time(tmp_path, monkeypatch):
    """A set made from a list of 128 values (64 of hash 0, 64 of hash 1) put into a list 20,000 times:
    a set of more than two values is no pair, so the scan adds none of them as first items; adding
    its 128 at each use would make a 2 MB file cost the scan over a hundred million steps."""
    from cnnsuite.trust.picklescan import _Numbering
    from cnnsuite.trust.untrusted import check_pickle

    added = []
    add = _Numbering._add
    monkeypatch.setattr(_Numbering, "_add", staticmethod(lambda *args: added.append(1) or add(*args)))
    values = COLLIDING[:64] + [k + 1 for k in COLLIDING[:64]]
    made = b"c__builtin__\nset\n](" + b"".join(ops(v) for v in values) + b"e\x85Rq\x01"
    write_pickle(tmp_path / "sets.pt", b"\x80\x02](" + made + b"h\x01" * 20_000 + b"e.")
    check_pickle(tmp_path / "sets.pt", "sets.pt")
    assert len(added) < 200_000, len(added)


#: torch.save's persistent id of a float storage of one value, key "0" (the record torch.save({"x": zeros(1)}) has)
STORAGE = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ"
ENCODED = b"c_codecs\nencode\nX\x07\x00\x00\x00storageX\x06\x00\x00\x00latin1\x86R"


def view_of_one_value(size: tuple, stride: tuple) -> bytes:
    """The opcodes of ``_rebuild_tensor_v2`` of :data:`STORAGE` at ``size`` and ``stride``: strides of 0
    make its one stored value pass for as many as ``size`` declares."""
    hooks = b"ccollections\nOrderedDict\n)R"
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n(" + STORAGE + b"K\x00" + ops(size) + ops(stride) + b"\x89" + hooks + b"tR"
    )


@pytest.mark.parametrize(
    "pickled, said",
    [
        pytest.param(  # set() iterates a view of one stored zero, a new tensor for each of its two million values
            b"\x80\x02c__builtin__\nset\n" + view_of_one_value((2_000_000,), (0,)) + b"\x85R.",
            "it calls builtins.set on a tensor, which torch.save never hands it",
            id="set() of a view passing for millions",
        ),
        pytest.param(  # BUILD updates an OrderedDict's attributes from the view's rows, one pair each
            b"\x80\x02ccollections\nOrderedDict\n)R" + view_of_one_value((1_000_000, 2), (0, 0)) + b"b.",
            "it sets attributes of the result of collections.OrderedDict from a tensor",
            id="an OrderedDict's attributes from a view passing for millions",
        ),
        pytest.param(
            b"\x80\x02X\x01\x00\x00\x00a)R.",
            "it calls a str, where torch.save calls globals only",
            id="a call of what is no global",
        ),  # fmt: skip
        pytest.param(  # OrderedDict(L) reads each item of L as a pair: a tensor's rows, every one it passes for
            b"\x80\x02ccollections\nOrderedDict\n](" + view_of_one_value((1_000_000,), (0,)) + b"e\x85R.",
            "it calls collections.OrderedDict on a list, which torch.save never hands it",
            id="OrderedDict() of a list holding a view passing for millions",
        ),
        pytest.param(  # set() hashes every value a storage holds, whose values can be made to collide
            b"\x80\x02c__builtin__\nset\n" + STORAGE + b"\x85R.",
            "it calls builtins.set on a storage",
            id="set() of a storage",
        ),
        pytest.param(  # BUILD on a tensor is Tensor.set_(), a new view of any storage
            b"\x80\x02" + view_of_one_value((1,), (1,)) + b"(" + STORAGE + b"K\x00" + ops((9,)) + ops((0,)) + b"tb.",
            "it sets attributes of a tensor from a tuple",
            id="a tensor re-viewed by BUILD",
        ),
        pytest.param(  # set(*[[1]]): torch calls func(*args) on a list too
            b"\x80\x02c__builtin__\nset\n](](K\x01eeR.",
            "it calls builtins.set on a list, where torch.save writes a tuple of arguments",
            id="arguments as a list",
        ),
        pytest.param(handed_again("SETITEMS"), "it calls builtins.set on a mapping", id="set() of a mapping"),
        pytest.param(handed_again("SETITEM"), "it calls builtins.set on a mapping", id="the same filled one at a time"),
        pytest.param(
            handed_again("REDUCE", values=300), "it calls builtins.set on the result of builtins.set", id="set of a set"
        ),
        pytest.param(
            b"\x80\x02c__builtin__\nset\nK\x01K\x00\x86\x85R.", "it calls builtins.set on a tuple", id="set of a tuple"
        ),
        pytest.param(  # S = "1" * 100_000; complex(S) a thousand times over, 6 bytes each: each parses all of S
            b"\x80\x02](X\xa0\x86\x01\x00"
            + b"1" * 100_000
            + b"q\x01c__builtin__\ncomplex\nq\x03"
            + b"h\x03h\x01\x85R" * 1000
            + b"e.",
            "it calls builtins.complex on a str",
            id="complex() of one string again and again",
        ),  # fmt: skip
        pytest.param(
            updated_from_pairs(b"(", b"t"),
            "it sets attributes of the result of collections.OrderedDict from a tuple",
            id="an OrderedDict's attributes from tuples of pairs",
        ),
        pytest.param(
            updated_from_pairs(b"](", b"e"),
            "it sets attributes of the result of collections.OrderedDict from a list",
            id="an OrderedDict's attributes from lists of pairs",
        ),
        pytest.param(  # a dtype is named for _rebuild_tensor_v3, never called
            b"\x80\x02ctorch\nfloat32\n(" + STORAGE + b"tR.",
            "it calls torch.float32, which torch.save writes as a value, never calls",
            id="a dtype called",
        ),
        pytest.param(  # a rebuild is handed its storage first, and no other after it
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("
            + STORAGE
            + b"K\x00"
            + ops((1,))
            + ops((1,))
            + b"\x89"
            + STORAGE
            + b"tR.",
            r"it calls torch._utils._rebuild_tensor_v2 on a storage, .*, a storage, which torch.save never hands it",
            id="a rebuild handed a second storage",
        ),
        # a storage is checked against its record by key and size: torch reads these the same as torch.save's
        pytest.param(
            b"\x80\x02" + STORAGE.replace(b"X\x01\x00\x00\x000", b"G?\xe0\x00\x00\x00\x00\x00\x00") + b".",
            "it names a storage by a tuple other than as torch.save does",
            id="a storage keyed by a float",
        ),
        pytest.param(
            b"\x80\x02" + STORAGE.replace(b"X\x07\x00\x00\x00storage", ENCODED) + b".",
            "it names a storage by a tuple other than as torch.save does",
            id="a storage named by bytes",
        ),
        pytest.param(
            b"\x80\x02(" + STORAGE + STORAGE.replace(b"K\x01t", b"J\x00\xca\x9a;t") + b"t.",
            r"it declares storage '0' twice, as \('FloatStorage', 1\) and \('FloatStorage', 1000000000\)",
            id="a storage declared twice",
        ),
    ],
)
def test_a_call_or_storage_handed_what_torch_save_never_hands_it_is_refused_before_torch_unpickles_it(
    tmp_path, monkeypatch, pickled, said
):
    """The calls the scan allows are handed what torch.save hands them, nothing else: ``OrderedDict()``
    nothing or a list of pairs, ``set()`` a new list, ``complex()`` numbers, a rebuild a storage first
    and no tensor after it, and ``BUILD`` sets an ``OrderedDict``'s attributes from a mapping. What
    they iterate otherwise is no list the scan counts: a tensor viewing one stored value passes for as
    many as its shape declares, which ``set()`` would make a tensor each of. A storage's persistent id
    is as torch.save writes it, or the check of its size against its record is skipped."""
    from cnnsuite.trust.checkpoint import load_checkpoint

    def unreached(*args, **kwargs):
        raise AssertionError("torch.load was called")

    path = tmp_path / "handed.ckpt"
    write_pickle(path, pickled)
    monkeypatch.setattr(torch, "load", unreached)
    with pytest.raises(ValueError, match=r"handed.ckpt: cannot load as a checkpoint \(" + said):
        load_checkpoint(path)


def test_a_weights_file_of_older_torch_naming_its_pairs_loads(tmp_path):
    """Weight files published with torch before 1.0 (in the legacy format, from Python 2) build their
    state dict as ``OrderedDict([[key, tensor], ...])`` and pass ``None`` for the tensors' hooks."""
    import zipfile

    from cnnsuite.trust.untrusted import load_weights_only

    path = tmp_path / "older.pth"
    torch.save({"w": torch.tensor([2.5])}, path)  # a record data/0 holding one float
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + STORAGE + b"K\x00" + ops((1,)) + ops((1,)) + b"\x89NtR"
    pickled = b"\x80\x02ccollections\nOrderedDict\n](](" + ops("w") + tensor + b"ee\x85R."
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, pickled if name.endswith("data.pkl") else content)
    loaded = load_weights_only(path, "older.pth: cannot load")
    assert type(loaded) is collections.OrderedDict and torch.equal(loaded["w"], torch.tensor([2.5]))


def overlapping_records(path, count: int, size: int) -> None:
    """A zip archive holding ``{"w<j>": tensor}`` for ``count`` storages of ``size`` bytes each, as
    torch.save writes them, but their records overlap: each record's local header sits inside the
    record before it, and all end in one run of ``size`` zeros, so the file holds about one storage."""
    import struct
    import zipfile
    import zlib

    def tensor(j: int) -> bytes:
        storage = STORAGE.replace(b"FloatStorage", b"ByteStorage").replace(b"X\x01\x00\x00\x000", ops(str(j)))
        return (
            b"ctorch._utils\n_rebuild_tensor_v2\n("
            + storage.replace(b"K\x01t", ops(size) + b"t")
            + b"K\x00"
            + (ops((size,)) + ops((1,)) + b"\x89ccollections\nOrderedDict\n)RtR")
        )

    pickled = b"\x80\x02}(" + b"".join(ops(f"w{j}") + tensor(j) for j in range(count)) + b"u."
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in (("a/data.pkl", pickled), ("a/byteorder", b"little"), ("a/version", b"3\n")):
            archive.writestr(name, content)
        listed = [(i.filename.encode(), i.CRC, i.file_size, i.header_offset) for i in archive.infolist()]
    head = path.read_bytes()[: path.read_bytes().index(b"PK\x01\x02")]  # the records, without the directory
    names = [f"a/data/{j}".encode() for j in range(count)]

    def local(name: bytes, crc: int) -> bytes:
        return b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, 0x21, crc, size, size, len(name), 0) + name

    headers = [local(name, 0) for name in names]
    for j in reversed(range(count)):  # each record's bytes: the headers after its own, then the zeros
        headers[j] = local(names[j], zlib.crc32((b"".join(headers[j + 1 :]) + bytes(size))[:size]))
    offsets = [len(head) + sum(map(len, headers[:j])) for j in range(count)]
    body = head + b"".join(headers) + bytes(size)
    for j, name in enumerate(names):
        start = offsets[j] + len(headers[j])
        listed.append((name, zlib.crc32(body[start : start + size]), size, offsets[j]))
    directory = b"".join(
        b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 0, 0, 0x21, crc, n, n, len(name), 0, 0, 0, 0, 0, at)
        + name
        for name, crc, n, at in listed
    )  # fmt: skip
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(listed), len(listed), len(directory), len(body), 0)
    path.write_bytes(body + directory + end)


def test_a_checkpoint_of_overlapping_records_is_refused_before_torch_unpickles_it(tmp_path):
    """A checkpoint is memory-mapped, each storage from where its record's local header says its bytes
    start: records whose headers sit inside the record before them share their bytes, each as large as
    declared, so a file of about one storage passed for a hundred (and for the square of its size, grown)."""
    from cnnsuite.trust.untrusted import check_pickle

    path = tmp_path / "overlapping.ckpt"
    overlapping_records(path, 100, 20_000)
    mapped = torch.load(path, weights_only=True, mmap=True)
    assert sum(t.untyped_storage().nbytes() for t in mapped.values()) == 100 * 20_000 > 2 * path.stat().st_size
    with pytest.raises(ValueError, match=r"overlapping.ckpt \(its storages '0' and '1' overlap in the file"):
        check_pickle(path, "overlapping.ckpt")


def test_a_zip_holding_one_record_twice_is_refused(tmp_path):
    """Python's zipfile, which the record sizes are read with, and torch's reader may take different ones
    of two records of one name: torch.save writes each once."""
    import zipfile

    from cnnsuite.trust.untrusted import check_pickle

    path = tmp_path / "twice.ckpt"
    torch.save({"x": torch.zeros(4)}, path)
    with zipfile.ZipFile(path, "a") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        archive.writestr(next(n for n in archive.namelist() if n.endswith("data/0")), bytes(1000))
    with pytest.raises(ValueError, match=r"twice.ckpt \(its record '.*data/0' is there twice"):
        check_pickle(path, "twice.ckpt")


@pytest.mark.parametrize("dtype, said", [(torch.float8_e4m3fn, None), (torch.float4_e2m1fn_x2, "which cannot be read")])
def test_a_backbone_weights_file_of_a_dtype_without_isfinite_is_checked_or_refused_in_one_line(tmp_path, dtype, said):
    """torch has no ``isfinite`` for some floating dtypes weights_only loads: such backbone weights
    are checked as float32, or refused, named, where torch cannot convert them; never a traceback."""
    from cnnsuite.errors import BadFileError
    from cnnsuite.training.transfer import backbone_state

    path = tmp_path / "odd.pt"
    torch.save({"stages.0.0.0.weight": torch.zeros(8, 1, 3, 3, dtype=torch.uint8).view(dtype)}, path)
    if said is None:
        assert backbone_state(path)["stages.0.0.0.weight"].dtype == dtype
    else:
        with pytest.raises(
            BadFileError, match=r"odd.pt: stages.0.0.0.weight holds weights of torch.float4_e2m1fn_x2, "
        ):
            backbone_state(path)


def test_a_setting_that_defines_the_run_is_refused_where_a_checkpoint_is_rebuilt():
    """``cnnsuite evaluate --data.image_size 64`` would score the network on inputs of another size
    than it trained on: only where the data is and how it loads are the user's, and a mistyped
    key is named with the closest of those."""
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    from cnnsuite.trust.checkpoint import data_arguments

    checkpoint = {"datamodule_hyper_parameters": {"image_size": 32}}
    with pytest.raises(ConfigError, match=r"^--data\.image_size: comes from the checkpoint, which defines the run"):
        data_arguments(checkpoint, RecognitionDataModule, {"image_size": 64}, "x.ckpt")
    with pytest.raises(ConfigError, match=r"^unknown key data\.data_dri: did you mean data\.data_dir"):
        data_arguments(checkpoint, RecognitionDataModule, {"data_dri": "photos"}, "x.ckpt")
    assert data_arguments(checkpoint, RecognitionDataModule, {"num_workers": 0}, "x.ckpt")["image_size"] == 32


@pytest.mark.parametrize("value", ["weights", 3, [torch.zeros(2)]])
def test_a_state_dict_holding_something_other_than_tensors_is_refused_by_its_outline(value):
    """``state_dict`` entries that are no tensors (a string, a number, a list) would meet the
    checks of stored values and the weight loading as a traceback; they are named in one line."""
    from cnnsuite.errors import CheckpointError
    from cnnsuite.trust.checkpoint import CLASSES_KEY, check_outline

    classes = {"model": "cnnsuite.tasks.recognition2d.module.RecognitionModule",
               "datamodule": "cnnsuite.tasks.recognition2d.datamodule.RecognitionDataModule"}  # fmt: skip
    checkpoint = {CLASSES_KEY: classes, "state_dict": {"backbone.weight": torch.zeros(2), "head.weight": value}}
    with pytest.raises(CheckpointError, match=r"^x\.ckpt: its 'state_dict' holds a \w+ at 'head\.weight', not a"):
        check_outline(checkpoint, "x.ckpt")
