"""Long runs and many processes: resume in the run's own folder with the best score intact,
atomic checkpoints, kills, a diverging loss, determinism, a bad network caught early, DDP.

Tests that start real processes (kills, DDP) are marked ``slow``: ``make test-slow``."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from conftest import ROOT, fit, make_image_folder, script_val_acc, task_config
from test_biomedical3d import SMALL, make_volume_folder

from cnnsuite.errors import ConfigError
from cnnsuite.training.classification import ClassificationModule
from cnnsuite.training.runs import AtomicCheckpointIO


def val_scores(run, key="val/acc"):
    """``{epoch: value}`` of ``key`` in a run's metrics.csv."""
    with (run / "metrics.csv").open() as f:
        return {int(r["epoch"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def best_state(ckpt):
    callbacks = torch.load(ckpt, weights_only=True)["callbacks"]
    return next(v for k, v in callbacks.items() if k.startswith("ModelCheckpoint{"))


def test_resume_goes_on_in_the_run_folder_and_keeps_the_best(tmp_path, image_folder, monkeypatch):
    # val/acc scripted per epoch: the best (0.9) comes before the resume, the epochs after are worse
    scripted = {0: 0.5, 1: 0.9, 2: 0.3, 3: 0.4}
    script_val_acc(monkeypatch, scripted)
    common = ["--data.data_dir", str(image_folder), "--data.batch_size", "8", "--evaluate", "false",
              "--trainer.check_val_every_n_epoch", "1"]  # fmt: skip
    run = fit("recognition2d", tmp_path, *common, "--trainer.max_epochs", "2")
    config = (run / "config.yaml").read_text()
    # a model option given with it is the checkpoint's all the same, and said to be unused
    with pytest.warns(UserWarning, match=r"the model and the data settings .*--model.dropout given on the command"):
        fit("recognition2d", tmp_path, *common, "--trainer.max_epochs", "4", "--ckpt_path", "last",
            "--model.dropout", "0.5")  # fmt: skip

    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0"]
    assert (run / "config.yaml").read_text() == config and (run / "config.resume-1.yaml").is_file()
    assert val_scores(run) == pytest.approx(scripted)  # the CSV log goes on below the first part's rows
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # TensorBoard: one file per part, none lost
    best = run / "checkpoints" / "best.ckpt"
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert best_state(best)["best_model_score"] == pytest.approx(0.9)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


def test_a_run_on_the_embedded_default_resumes_where_it_is_not_generated_yet(tmp_path):
    """A new machine, or another ``--data.data_root``: the default is generated again before
    the checkpoint's split is checked against it, not refused as other data."""
    common = ["--evaluate", "false", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    run = fit("recognition2d", tmp_path / "first", *common, "--trainer.max_epochs", "1")
    fit("recognition2d", tmp_path / "first", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last",
        "--data.data_root", str(tmp_path / "elsewhere"))  # fmt: skip
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert (tmp_path / "elsewhere" / "recognition2d").is_dir()


def test_a_run_copied_to_another_folder_resumes_with_its_best_score(tmp_path, image_folder, monkeypatch):
    """Lightning reloads a best score only where the stored absolute folder is the current one:
    a run copied elsewhere (another disk, a cluster's scratch) and resumed there lost it, and
    its first worse epoch replaced best.ckpt."""
    script_val_acc(monkeypatch, {0: 0.5, 1: 0.9, 2: 0.3})
    common = ["--data.data_dir", str(image_folder), "--data.batch_size", "8", "--evaluate", "false",
              "--trainer.check_val_every_n_epoch", "1"]  # fmt: skip
    fit("recognition2d", tmp_path / "here", *common, "--trainer.max_epochs", "2")
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    run = fit("recognition2d", tmp_path / "there", *common, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    best = run / "checkpoints" / "best.ckpt"
    assert torch.load(best, weights_only=True)["epoch"] == 1
    resumed = best_state(run / "checkpoints" / "last.ckpt")  # written after the resumed epoch
    assert resumed["best_model_score"] == pytest.approx(0.9) and resumed["best_model_path"] == str(best)


def test_runs_without_a_logger_each_get_their_own_folder_and_resume(tmp_path, image_folder):
    """``--trainer.logger false`` wrote every run's checkpoints and evaluation straight into the
    root folder, so a second run replaced the first's, and ``--ckpt_path last`` found none."""
    common = ["--data.data_dir", str(image_folder), "--data.batch_size", "8", "--trainer.logger", "false",
              "--trainer.check_val_every_n_epoch", "1"]  # fmt: skip
    first = fit("recognition2d", tmp_path, *common, "--trainer.max_epochs", "1")
    best = (first / "checkpoints" / "best.ckpt").read_bytes()
    fit("recognition2d", tmp_path, *common, "--trainer.max_epochs", "1", "--seed_everything", "1")
    assert (first / "checkpoints" / "best.ckpt").read_bytes() == best and (first / "evaluation").is_dir()
    second = tmp_path / "runs" / "version_1"
    assert (second / "checkpoints" / "best.ckpt").is_file() and (second / "evaluation").is_dir()
    fit("recognition2d", tmp_path, *common, "--trainer.max_epochs", "2", "--ckpt_path", "last", "--evaluate", "false")
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0", "version_1"]


class StopAt(L.Callback):
    """Stops the run after batch ``batch`` of epoch ``epoch``, as ``trainer.max_time`` does."""

    def __init__(self, epoch: int = 0, batch: int = 0) -> None:
        self.moment = (epoch, batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.moment:
            trainer.should_stop = True


@pytest.mark.parametrize("validate_every", [1, 2])
def test_a_run_stopped_inside_an_epoch_resumes_into_the_rest_of_it(tmp_path, image_folder, validate_every):
    """A run stopped inside an epoch (max_time, a callback) resumes into the rest of that epoch
    and ends as the run never stopped; its epoch-end checkpoint had counted the epoch done.
    Validating every epoch, Lightning validates at the stop too, and a new best made there
    travels in last.ckpt."""
    common = ["--data.data_dir", str(image_folder), "--data.batch_size", "4", "--evaluate", "false",
              "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", str(validate_every)]  # fmt: skip
    whole = fit("recognition2d", tmp_path / "whole", *common)
    stop = ["--trainer.callbacks+=test_long_runs.StopAt", "--trainer.callbacks.epoch=0", "--trainer.callbacks.batch=2"]
    part = fit("recognition2d", tmp_path / "part", *common, *stop)
    assert torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    fit("recognition2d", tmp_path / "part", *common, "--ckpt_path", "last")
    ours, theirs = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in (part, whole))
    assert (ours["epoch"], ours["global_step"]) == (theirs["epoch"], theirs["global_step"])
    for key, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), key


def test_testing_a_runs_checkpoint_leaves_the_run_folder_as_it_was(tmp_path, image_folder):
    """``cnnsuite test --ckpt_path <run>/checkpoints/best.ckpt`` logged into the training run's
    folder: a step-0 row in its metrics.csv and a config.resume-1.yaml for a run never resumed.
    It logs to a folder of its own, as Lightning's default does."""
    from cnnsuite.cli import main

    common = ["--data.data_dir", str(image_folder), "--data.batch_size", "8"]
    run = fit("recognition2d", tmp_path, *common, "--trainer.max_epochs", "1", "--evaluate", "false")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    main(["test", "--config", task_config("recognition2d"), *common, "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path / "runs"),
          "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])  # fmt: skip
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert "test/acc" in (tmp_path / "runs" / "version_1" / "metrics.csv").read_text()


def test_a_checkpoints_stored_paths_become_the_runs_own_files(tmp_path):
    """The paths a checkpoint stores are untrusted: Lightning removes them as the previous best
    or last file once a new one is written. Restored, each is the callback's own file. Its best
    score comes along only where that file is, and only as a finite number: a run resumed into
    a new folder with the score of a best.ckpt left behind wrote none, and its evaluation
    failed ('best.ckpt: no such checkpoint file')."""
    from cnnsuite.training.runs import restored_in_place

    stored = {"dirpath": "/runs/version_0/checkpoints", "best_model_score": torch.tensor(0.9),
              "best_model_path": "/etc/passwd", "kth_best_model_path": "/etc/passwd", "kth_value": torch.tensor(0.9),
              "best_k_models": {"/etc/passwd": torch.tensor(0.9)},
              "last_model_path": "/runs/version_0/checkpoints/../../../home/me/.bashrc"}  # fmt: skip
    folder = tmp_path / "version_3" / "checkpoints"
    own = str(folder / "best.ckpt")
    state = restored_in_place(stored, str(folder), own)  # a new folder: no best.ckpt there
    assert state["best_k_models"] == {} and state["best_model_score"] is None
    folder.mkdir(parents=True)
    (folder / "best.ckpt").write_bytes(b"")
    state = restored_in_place(stored, str(folder), own)
    assert state["dirpath"] == str(folder) and state["best_model_score"] == 0.9
    assert {state["best_model_path"], state["kth_best_model_path"], state["last_model_path"]} == {own}
    assert list(state["best_k_models"]) == [own]
    for score in (torch.tensor(float("nan")), "abc"):
        state = restored_in_place({**stored, "best_k_models": {"/etc/passwd": score}}, str(folder), own)
        assert state["best_k_models"] == {} and state["best_model_score"] is None


def test_a_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, image_folder, monkeypatch):
    def configure_losses(self):
        cross_entropy = torch.nn.CrossEntropyLoss()
        self.loss = lambda logits, y: cross_entropy(logits, y) * (float("nan") if self.global_step >= 5 else 1.0)

    monkeypatch.setattr(ClassificationModule, "configure_losses", configure_losses)
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 5 .*last good checkpoint: .*last.ckpt"):
        fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--data.batch_size", "4",
            "--last_checkpoint.every_n_train_steps", "2", "--trainer.max_epochs", "3")  # fmt: skip
    last = torch.load(tmp_path / "runs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_the_same_seed_gives_the_same_figures(tmp_path, image_folder):
    volumes = make_volume_folder(tmp_path / "volumes")
    for task, args in (
        ("recognition2d", ["--data.data_dir", str(image_folder), "--data.batch_size", "8"]),
        ("biomedical3d", ["--data.data_dir", str(volumes), "--data.batch_size", "4", *SMALL]),
    ):
        figures = [
            json.loads(
                (
                    fit(task, tmp_path / f"{task}{i}", *args, "--trainer.max_epochs", "2") / "evaluation/metrics.json"
                ).read_text()
            )
            for i in range(2)
        ]
        assert figures[0] == figures[1], task


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.spatial_size", "[8, 8, 8]", "--model.init_args.backbone_kwargs", "{channels: [4, 8, 16, 32, 64]}"],
         r"\(1, 8, 8, 8\) are 8x8x8 where the backbone's total stride is 32x32x32"),
        # LeNet-5's unpadded 5x5 kernels: 16 → 12 → 6 → 2 → 1, then C5's kernel is larger than what is left,
        # named by stage before any forward pass (backbone.geometry.check_fits)
        (["--data.spatial_size", "[16, 16, 16]", "--model.init_args.backbone", "lenet5",
          "--model.init_args.backbone_kwargs", "{}"],
         r"model.backbone='lenet5'\): stage 2 \(conv 5×5×5\) meets a 1×1×1 feature map at input size 1×16×16×16"),
    ],
)  # fmt: skip
def test_a_network_that_does_not_fit_the_data_is_named_before_any_data_is_written(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        fit("biomedical3d", tmp_path, *args)
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_checking_that_a_model_fits_its_data_leaves_its_statistics_and_mode_as_they_were():
    """The check runs a zero batch through the model, which a checkpoint's rebuild has loaded:
    in train mode that batch would move every BatchNorm's running statistics toward zeros."""
    from types import SimpleNamespace

    from cnnsuite.training.fits import check_model_fits_data

    model = ClassificationModule(num_classes=2, backbone="convnet", backbone_kwargs={"channels": [4]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_model_fits_data(model, SimpleNamespace(input_shape=(1, 8, 8), pixel_kind="image"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training and model.example_input_array.shape == (2, 1, 8, 8)
    model.eval()
    check_model_fits_data(model, SimpleNamespace(input_shape=(1, 8, 8), pixel_kind="image"))
    assert not model.training


@pytest.mark.parametrize("bad", [["--data.init_args.nope", "1"], ["--trainer.max_epochs", "many"]])
def test_a_bad_config_is_refused_before_any_data_is_written(tmp_path, bad):
    with pytest.raises(ConfigError, match=bad[0].split(".")[-1]):  # fit() passes --debug: the error itself
        fit("recognition2d", tmp_path, *bad)
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_a_kill_during_a_checkpoint_write_leaves_the_old_checkpoint_whole(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    # A second process writes a large checkpoint over it and is killed in the middle.
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, torch; from cnnsuite.training.runs import AtomicCheckpointIO; "
         "AtomicCheckpointIO().save_checkpoint({'step': 2, 'w': torch.ones(400_000_000)}, sys.argv[1])", str(target)]
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 1_000_000 for p in tmp_path.glob(".last.ckpt.*.tmp")):
        assert writer.poll() is None and time.monotonic() < deadline, "the write ended before it could be killed"
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert torch.load(target, weights_only=True)["step"] == 1
    AtomicCheckpointIO().save_checkpoint({"step": 3}, target)  # the next write clears the killed one's leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def cnnsuite(*args, env=None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "cnnsuite", *args], cwd=ROOT, env=env, **kwargs)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_planned_epochs_with_the_best_intact(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=20)
    args = ["fit", "--config", task_config("recognition2d"), "--data.data_dir", str(folder),
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_epochs", "12",
            "--data.batch_size", "2", "--last_checkpoint.every_n_train_steps", "5", "--evaluate", "false",
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    run = tmp_path / "runs" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    first = cnnsuite(*args)
    deadline, killed_at = time.monotonic() + 300, None
    while killed_at is None:
        assert first.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        if last.is_file():
            state = torch.load(last, weights_only=True)
            if state["epoch"] >= 2 and state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"]:
                first.send_signal(signal.SIGKILL)  # mid-epoch, right after a step checkpoint
                killed_at = state["global_step"]
        time.sleep(0.05)
    first.wait()
    assert cnnsuite(*args, "--ckpt_path", "last").wait() == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0"]
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 11 and final["global_step"] >= killed_at
    scores = val_scores(run)
    assert sorted(scores) == list(range(1, 12, 2))  # the config validates every second epoch, the kill aside
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert scores[best["epoch"]] == max(scores.values())
    assert best_state(run / "checkpoints" / "best.ckpt")["best_model_score"] == pytest.approx(max(scores.values()))


#: A callback that kills its own process (SIGKILL, nothing runs after it) at the moment
#: ``CNNSUITE_KILL_AT=<hook>,<epoch>[,<batch>]`` names: a kill at an exact moment of a run.
KILLER = """
import os, signal
import lightning as L


class KillAt(L.Callback):
    def __init__(self):
        hook, epoch, *batch = os.environ.get("CNNSUITE_KILL_AT", "none,-1").split(",")
        self.moment = (hook, int(epoch), int(batch[0]) if batch else None)

    def kill(self, trainer, hook, batch=None):
        if not trainer.sanity_checking and (hook, trainer.current_epoch, batch) == self.moment:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_start(self, trainer, pl_module):
        self.kill(trainer, "train_epoch_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.kill(trainer, "train_batch_start", batch_idx)

    def on_validation_start(self, trainer, pl_module):
        self.kill(trainer, "validation_start")

    def on_validation_end(self, trainer, pl_module):  # before ModelCheckpoint's: best.ckpt not yet written
        self.kill(trainer, "validation_end")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):  # the epoch's own last.ckpt, being saved
        if not trainer.validating and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.kill(trainer, "epoch_checkpoint")
"""


def csv_rows(run):
    """The rows of a run's metrics.csv, their empty cells left out."""
    with (run / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


def assert_same_weights(ckpt, reference):
    mine, theirs = (torch.load(c, weights_only=True) for c in (ckpt, reference))
    assert (mine["epoch"], mine["global_step"]) == (theirs["epoch"], theirs["global_step"])
    assert mine["state_dict"].keys() == theirs["state_dict"].keys()
    for key, value in theirs["state_dict"].items():
        assert torch.equal(mine["state_dict"][key], value), key


@pytest.mark.slow
def test_kills_at_any_moment_resume_into_the_run_that_was_not_killed(tmp_path):
    """One run killed five times, each at another moment, and resumed with ``--ckpt_path last``
    after each kill, ends as the run that was never killed: the same metrics.csv (each epoch's
    validation once, no row lost or doubled), steps, best and last weights, bit for bit."""
    (tmp_path / "killer").mkdir()
    (tmp_path / "killer" / "killer.py").write_text(KILLER)
    folder = make_image_folder(tmp_path / "images", per_class=8)  # 4 training steps an epoch
    common = ["fit", "--config", task_config("recognition2d"), "--data.data_dir", str(folder),
              "--trainer.max_epochs", "3", "--data.batch_size", "4", "--last_checkpoint.every_n_train_steps", "1",
              "--evaluate", "false", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false"]  # fmt: skip
    whole = cnnsuite(*common, "--trainer.default_root_dir", str(tmp_path / "whole"))  # alongside
    killed = [*common, "--trainer.default_root_dir", str(tmp_path / "killed"), "--trainer.callbacks+=killer.KillAt"]
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "killer"), os.environ.get("PYTHONPATH", "")])}
    moments = [
        "validation_start,0",  # the last step of epoch 0 trained (and its step checkpoint due), not validated
        "train_batch_start,1,2",  # mid-epoch, right after a step checkpoint
        "validation_end,1",  # epoch 1 validated and its row written, best.ckpt not yet
        "epoch_checkpoint,1",  # while epoch 1's own last.ckpt is being saved (its validation row written)
        "train_epoch_start,2",  # right after epoch 1's last.ckpt and rows
    ]
    for i, moment in enumerate(moments):
        resume = ["--ckpt_path", "last"] if i else []
        code = cnnsuite(*killed, *resume, env={**env, "CNNSUITE_KILL_AT": moment}).wait(timeout=300)
        assert code == -signal.SIGKILL, f"the run was to be killed at {moment} (exit status {code})"
    assert cnnsuite(*killed, "--ckpt_path", "last", env=env).wait(timeout=300) == 0
    assert whole.wait(timeout=300) == 0

    run, reference = tmp_path / "killed" / "version_0", tmp_path / "whole" / "version_0"
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no .tmp left
    assert not list(run.glob("*.tmp"))
    assert [r["epoch"] for r in csv_rows(run) if r.get("val/acc")] == ["0", "1", "2"]
    assert csv_rows(run) == csv_rows(reference)
    for name in ("last.ckpt", "best.ckpt"):
        assert_same_weights(run / "checkpoints" / name, reference / "checkpoints" / name)


def test_a_run_resumed_from_any_step_checkpoint_ends_as_the_whole_run(tmp_path, image_folder, monkeypatch):
    """Every last.ckpt a run writes (one each step here) resumes it exactly: the loader goes
    on with the epoch's own batches, the augmentations and the epoch's metrics go on where
    they were, and a checkpoint taken just before a validation resumes into that validation."""
    saved = []  # every last.ckpt the whole run wrote, copied aside
    save = AtomicCheckpointIO.save_checkpoint

    def save_and_copy(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        if path.endswith("last.ckpt"):
            saved.append(tmp_path / f"saved-{len(saved)}.ckpt")
            saved[-1].write_bytes(open(path, "rb").read())

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_and_copy)
    common = ["--data.data_dir", str(image_folder), "--data.batch_size", "4", "--trainer.max_epochs", "2",
              "--last_checkpoint.every_n_train_steps", "1", "--evaluate", "false"]  # fmt: skip
    whole = fit("recognition2d", tmp_path / "whole", *common)
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save)
    states = [torch.load(p, weights_only=True) for p in saved]
    steps = [s["global_step"] for s in states]
    assert steps == list(range(1, len(steps) + 1))  # each step once, the epochs' own included
    progress = [s["loops"]["fit_loop"]["epoch_progress"]["current"] for s in states]
    epoch_ends = [s["global_step"] for s, p in zip(states, progress, strict=True) if p["processed"] > p["completed"]]
    assert epoch_ends, "no last.ckpt after a validation: the step checkpoint of an epoch's last batch took its place"
    per_epoch = epoch_ends[0]
    assert epoch_ends == [per_epoch, 2 * per_epoch] and per_epoch >= 3
    # mid-epoch 0, and the last step checkpoint before epoch 0's validation (none is taken after its last step)
    for step in (1, per_epoch - 1):
        part = tmp_path / f"from-{step}"
        (part / "runs/version_0/checkpoints").mkdir(parents=True)
        (part / "runs/version_0/checkpoints/last.ckpt").write_bytes(saved[step - 1].read_bytes())
        resumed = fit("recognition2d", part, *common, "--ckpt_path", "last")
        assert_same_weights(resumed / "checkpoints/last.ckpt", whole / "checkpoints/last.ckpt")
        assert csv_rows(resumed) == [r for r in csv_rows(whole) if int(r["step"]) >= step]  # what came after it


def test_the_training_loader_resumes_where_its_epoch_stopped():
    from cnnsuite.data.resumable import EpochSampler, ResumableDataLoader

    def loader(rank=0, ranks=1, epoch=0):
        data = list(range(10))
        sampler = EpochSampler(data, num_replicas=ranks, rank=rank, seed=7, epoch=epoch)
        return ResumableDataLoader(data, batch_size=3, sampler=sampler, generator=torch.Generator())

    def epoch_of(dl, epoch):
        dl.sampler.set_epoch(epoch)
        return [b.tolist() for b in dl]

    whole = loader()
    epochs = [epoch_of(whole, e) for e in range(3)]
    assert epochs[0] != epochs[1] and sorted(sum(epochs[1], [])) == list(range(10))
    assert epochs == [epoch_of(loader(), e) for e in range(3)]  # the order is the seed's and the epoch's

    first = loader(epoch=1)
    batches = iter(first)
    seen = [next(batches).tolist(), next(batches).tolist()]
    assert [b.tolist() for b in first][:1] == epochs[1][:1]  # another pass (PreciseBatchNorm's) counts nowhere
    state = first.state_dict()
    assert state == {"seed": 7, "epoch": 1, "batches": 2}
    resumed = loader()  # a new process: the sampler made for epoch 0
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # Lightning's call; it changes nothing
    rest = [b.tolist() for b in resumed]
    assert seen + rest == epochs[1]
    assert resumed.state_dict()["batches"] == 4 and epoch_of(resumed, 2) == epochs[2]

    shards = [epoch_of(loader(rank, 2), 1) for rank in (0, 1)]  # DDP: each rank its half of the epoch
    assert sorted(sum(shards[0] + shards[1], [])) == list(range(10))


def test_the_saved_generator_states_put_back_python_numpy_and_torch_draws():
    """A resumed run draws what the whole run would have: each generator a task or a user's
    transform may draw from is set back to its saved state, and the states load with weights_only."""
    import io
    import random

    import numpy as np

    from cnnsuite.training.rng import check_rng_states, rng_states, set_rng_states

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    buffer = io.BytesIO()
    torch.save(rng_states(), buffer)
    first = draws()
    buffer.seek(0)
    states = torch.load(buffer, weights_only=True)
    check_rng_states(states)
    assert draws() != first  # checking the states sets no generator of the process
    set_rng_states(states)
    assert draws() == first


def test_the_csv_log_keeps_every_row_through_kills_and_resumes(tmp_path):
    from cnnsuite.training.runs import AppendingCSVLogger

    def rows():
        with (tmp_path / "version_0" / "metrics.csv").open() as f:
            return [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]

    first = AppendingCSVLogger(tmp_path, name="", version=0)
    first.log_metrics({"lr": 0.1}, step=0)
    first.log_metrics({"epoch": 0, "val/acc": 0.5}, step=3)
    assert rows() == [{"lr": "0.1", "step": "0"}, {"epoch": "0", "step": "3", "val/acc": "0.5"}]  # on disk at once
    first.log_metrics({"epoch": 0, "train/loss": 2.0}, step=3)  # a new column: the file is rewritten
    with (tmp_path / "version_0" / "metrics.csv").open("a") as f:
        f.write("1,,7,,0.")  # a row cut short by a kill
    (tmp_path / "version_0" / "metrics.csv.tmp").write_text("epoch,")  # a rewrite killed before its rename
    # The resumed run goes on from a checkpoint taken before epoch 0's validation: it logs it again.
    second = AppendingCSVLogger(tmp_path, name="", version=0)
    second.log_metrics({"epoch": 0, "val/acc": 0.5}, step=3)
    second.log_metrics({"epoch": 0, "train/loss": 2.0}, step=3)
    second.log_metrics({"epoch": 1, "val/acc": 0.75}, step=7)
    assert rows() == [
        {"lr": "0.1", "step": "0"},
        {"epoch": "0", "step": "3", "val/acc": "0.5"},
        {"epoch": "0", "step": "3", "train/loss": "2.0"},
        {"epoch": "1", "step": "7", "val/acc": "0.75"},
    ]
    assert sorted(p.name for p in (tmp_path / "version_0").iterdir()) == ["metrics.csv"]


def evaluate_alone(ckpt, out, data_dir):
    """``cnnsuite evaluate`` of ``ckpt`` on its run's data, in a process of its own."""
    assert cnnsuite("evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(data_dir), "--out", str(out)).wait() == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_a_two_process_ddp_fit_evaluates_like_one_process(tmp_path, launcher):
    """recognition2d through Lightning's own launcher, biomedical3d through torchrun: both end
    with evaluation/metrics.json equal to evaluating best.ckpt alone in one process."""
    if launcher == "lightning":
        task, data = "recognition2d", ["--data.data_dir", str(make_image_folder(tmp_path / "images", per_class=8))]
    else:
        task, data = "biomedical3d", ["--data.data_dir", str(make_volume_folder(tmp_path / "volumes")), *SMALL]
    args = ["fit", "--config", task_config(task), *data, "--data.batch_size", "4", "--data.num_workers", "0",
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_epochs", "2",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    if launcher == "lightning":  # the command starts its second rank itself
        process = cnnsuite(*args)
    else:  # torchrun starts both ranks
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        process = subprocess.Popen([*torchrun, "-m", "cnnsuite", *args], cwd=ROOT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert process.wait(timeout=400) == 0
    run = tmp_path / "runs" / "version_0"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    after_fit = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert after_fit == evaluate_alone(run / "checkpoints" / "best.ckpt", tmp_path / "alone", data[1])


class TwoRanks:
    """A stand-in for a DDP strategy whose two ranks hold ``values[0]`` and ``values[1]``."""

    def __init__(self):
        self.calls = []

    def reduce(self, tensor, reduce_op="mean"):
        assert reduce_op == "mean"
        self.calls.append(tensor.clone())
        return self.other[len(self.calls) - 1].add(tensor).div(2)


def test_precise_batchnorm_pools_the_statistics_of_every_rank():
    from cnnsuite.training.callbacks import pool_statistics

    shards = [torch.randn(64, 3) * 2 + 1, torch.randn(64, 3) * 0.5 - 3]  # what each rank saw

    def bn_of(shard):
        bn = torch.nn.BatchNorm1d(3, momentum=None)
        bn.train()
        bn(shard)
        return bn

    ranks = [bn_of(s) for s in shards]
    strategy = TwoRanks()
    strategy.other = [ranks[1].running_mean, ranks[1].running_var + ranks[1].running_mean ** 2]
    pool_statistics([ranks[0]], strategy)
    both = torch.cat(shards)
    torch.testing.assert_close(ranks[0].running_mean, both.mean(0))
    torch.testing.assert_close(ranks[0].running_var, both.var(0), rtol=0.02, atol=0.02)


def test_precise_batchnorm_leaves_an_epoch_in_progress_alone():
    from torch.utils.data import DataLoader

    from cnnsuite.training.callbacks import batches_aside

    loader = DataLoader(list(range(12)), batch_size=2, num_workers=1, persistent_workers=True)
    epoch = iter(loader)
    seen = [next(epoch).tolist(), next(epoch).tolist()]
    aside = batches_aside(loader)
    assert aside is not loader and [b.tolist() for b in aside][:1] == [[0, 1]]
    seen += [b.tolist() for b in epoch]  # the interrupted epoch goes on where it was
    assert seen == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]


def test_a_resumed_run_ends_where_the_whole_run_ends(tmp_path, image_folder):
    """Epoch, optimizer, scheduler and random generators carry on: two epochs, a stop and a
    resume to four give the weights and figures of four epochs in one go."""
    common = ["--data.data_dir", str(image_folder), "--data.batch_size", "8"]
    whole = fit("recognition2d", tmp_path / "whole", *common, "--trainer.max_epochs", "4")
    fit("recognition2d", tmp_path / "parts", *common, "--trainer.max_epochs", "2", "--evaluate", "false")
    parts = fit("recognition2d", tmp_path / "parts", *common, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    weights = [torch.load(run / "checkpoints/last.ckpt", weights_only=True)["state_dict"] for run in (whole, parts)]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=0, msg=key)
    assert (whole / "evaluation/metrics.json").read_text() == (parts / "evaluation/metrics.json").read_text()


def test_runs_started_one_after_another_in_one_process_get_their_own_folders(tmp_path, image_folder):
    common = ["--data.data_dir", str(image_folder), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
              "--trainer.limit_val_batches", "1", "--evaluate", "false"]  # fmt: skip
    fit("recognition2d", tmp_path, *common)
    fit("recognition2d", tmp_path, *common)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0", "version_1"]
    assert not list((tmp_path / "runs").glob("*/config.resume-*.yaml"))


def test_a_checkpoint_gets_the_permissions_the_umask_gives_a_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
        os.umask(0o002)
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "group.ckpt")
    finally:
        os.umask(old)
    # as torch.save and Lightning's own checkpoint writer leave them (a temporary file alone is 0o600)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "group.ckpt").stat().st_mode & 0o777 == 0o664


def test_ckpt_path_last_takes_the_highest_numbered_run_and_a_new_run_the_next_number(tmp_path):
    """``--ckpt_path last`` resumes the newest run that has a ``last.ckpt`` (version_10 after
    version_9, by number), a new run takes one past the highest number (gaps left alone), and a
    checkpoint of another root's ``version_N`` is no run of this root."""
    from cnnsuite.training.runs import newest_last_checkpoint, next_version, resumed_version

    for n in (2, 9, 10):
        (tmp_path / f"version_{n}" / "checkpoints").mkdir(parents=True)
        (tmp_path / f"version_{n}" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "version_11").mkdir()  # killed before its first checkpoint
    newest = tmp_path / "version_10" / "checkpoints" / "last.ckpt"
    assert newest_last_checkpoint(tmp_path) == newest
    assert next_version(tmp_path) == 12
    assert resumed_version(tmp_path, newest) == 10
    elsewhere = tmp_path / "other" / "version_3" / "checkpoints" / "last.ckpt"
    assert resumed_version(tmp_path, elsewhere) is None


def test_ranks_without_a_run_seed_shuffle_alike_and_seed_their_loaders_apart(monkeypatch):
    """Under DDP without ``seed_everything`` every rank takes seed 0, so their shuffles cover the
    data once (each process's own torch seed would give each its own order); each rank's loader
    generator is its own, so the workers' augmentations are not the same draws on every rank."""
    from cnnsuite.data.resumable import pass_seed, run_seed

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert run_seed(2) == 0
    assert run_seed(1) == torch.initial_seed()
    assert pass_seed(7, 3, 0) != pass_seed(7, 3, 1)


def test_each_epoch_seeds_the_training_loaders_workers_afresh():
    """The loader's generator (the seed of its workers' augmentations) is seeded by the epoch:
    seeded alike every epoch, the workers would draw the same augmentations each epoch."""
    from cnnsuite.data.resumable import EpochSampler, ResumableDataLoader, pass_seed

    data = list(range(6))
    loader = ResumableDataLoader(data, batch_size=2, sampler=EpochSampler(data, seed=7), generator=torch.Generator())
    seeds = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        list(loader)
        seeds.append(loader.generator.initial_seed())
    assert seeds == [pass_seed(7, 0, 0), pass_seed(7, 1, 0)]
