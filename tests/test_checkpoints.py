"""A checkpoint is untrusted input, and evaluation scores the run's own split on the data
the model learnt: what may be rebuilt from a checkpoint, and what is refused."""

import json
import shutil

import pytest
import torch
from conftest import fit, make_image_folder
from PIL import Image

from cnnsuite.checkpoint import rebuild
from cnnsuite.cli import main
from cnnsuite.evaluate import evaluate


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

    def point_at_grown(checkpoint):
        checkpoint["datamodule_hyper_parameters"]["data_dir"] = str(grown)

    tampered(ckpt, tmp_path / "copied.ckpt", point_at_grown)
    model, datamodule = rebuild(tmp_path / "copied.ckpt")
    assert datamodule.splits == saved
    metrics = evaluate(tmp_path / "copied.ckpt", tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"{len(saved['test'])} test samples" in report and "test/acc" in metrics


def test_a_checkpoint_without_a_split_and_no_run_folder_is_refused(trained, tmp_path):
    _, run = trained

    def drop_split(checkpoint):
        del checkpoint["RecognitionDataModule"]

    stripped = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "a" / "b" / "stripped.ckpt", drop_split)
    with pytest.raises(ValueError, match="stripped.ckpt: holds no train/val/test split"):
        evaluate(stripped, tmp_path / "out")
    # a checkpoint written before the split travelled inside it: its run folder's splits.json
    shutil.copy(run / "splits.json", tmp_path / "a" / "splits.json")
    assert rebuild(stripped, tmp_path / "a")[1].splits == json.loads((run / "splits.json").read_text())


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

    def point_at(path):
        return lambda checkpoint: checkpoint["datamodule_hyper_parameters"].update(data_dir=str(path))

    ckpt = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "renamed.ckpt", point_at(renamed))
    with pytest.raises(ValueError, match=r"classes \['bat', 'cat', 'dog'\] do not match the 3 classes"):
        evaluate(ckpt, tmp_path / "out")

    gray = shutil.copytree(folder, tmp_path / "gray")
    for image in gray.rglob("*.*"):
        Image.open(image).convert("L").save(image)
    ckpt = tampered(run / "checkpoints" / "best.ckpt", tmp_path / "gray.ckpt", point_at(gray))
    with pytest.raises(ValueError, match="images have 1 channels, .*gray.ckpt expects 3"):
        evaluate(ckpt, tmp_path / "out")


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
