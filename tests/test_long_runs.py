"""Long runs and many processes: resume in the run's own folder with the best score intact,
atomic checkpoints, kills, a diverging loss, determinism, a bad network caught early, DDP.

Tests that start real processes (kills, DDP) are marked ``slow``: ``make test-slow``."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, fit, make_image_folder, task_config
from test_biomedical3d import SMALL, make_volume_folder

from cnnsuite.classification import ClassificationModule
from cnnsuite.runs import AtomicCheckpointIO


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
    log_metrics = ClassificationModule._log_metrics

    def scripted_log(self, stage):
        if stage != "val":
            return log_metrics(self, stage)
        self.val_metrics.reset()
        self.log("val/acc", scripted[self.current_epoch])

    monkeypatch.setattr(ClassificationModule, "_log_metrics", scripted_log)
    common = ["--data.data_dir", str(image_folder), "--data.batch_size", "8", "--evaluate", "false"]
    run = fit("recognition2d", tmp_path, *common, "--trainer.max_epochs", "2")
    config = (run / "config.yaml").read_text()
    fit("recognition2d", tmp_path, *common, "--trainer.max_epochs", "4", "--ckpt_path", "last")

    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0"]
    assert (run / "config.yaml").read_text() == config and (run / "config.resume-1.yaml").is_file()
    assert val_scores(run) == pytest.approx(scripted)  # the CSV log goes on below the first part's rows
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # TensorBoard: one file per part, none lost
    best = run / "checkpoints" / "best.ckpt"
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert best_state(best)["best_model_score"] == pytest.approx(0.9)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


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


@pytest.mark.parametrize("bad", [["--data.init_args.nope", "1"], ["--trainer.max_epochs", "many"]])
def test_a_bad_config_is_refused_before_any_data_is_written(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit("recognition2d", tmp_path, *bad)
    assert exit_info.value.code == 2 and bad[0].split(".")[-1] in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_a_kill_during_a_checkpoint_write_leaves_the_old_checkpoint_whole(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    # A second process writes a large checkpoint over it and is killed in the middle.
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, torch; from cnnsuite.runs import AtomicCheckpointIO; "
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


def cnnsuite(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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
    assert sorted(scores) == list(range(12))
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert scores[best["epoch"]] == max(scores.values())
    assert best_state(run / "checkpoints" / "best.ckpt")["best_model_score"] == pytest.approx(max(scores.values()))


def evaluate_alone(ckpt, out):
    """``cnnsuite evaluate`` of ``ckpt`` in a process of its own."""
    assert cnnsuite("evaluate", "--ckpt", str(ckpt), "--out", str(out)).wait() == 0
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
    assert after_fit == evaluate_alone(run / "checkpoints" / "best.ckpt", tmp_path / "alone")


class TwoRanks:
    """A stand-in for a DDP strategy whose two ranks hold ``values[0]`` and ``values[1]``."""

    def __init__(self):
        self.calls = []

    def reduce(self, tensor, reduce_op="mean"):
        assert reduce_op == "mean"
        self.calls.append(tensor.clone())
        return self.other[len(self.calls) - 1].add(tensor).div(2)


def test_precise_batchnorm_pools_the_statistics_of_every_rank():
    from cnnsuite.callbacks import pool_statistics

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

    from cnnsuite.callbacks import batches_aside

    loader = DataLoader(list(range(12)), batch_size=2, num_workers=1, persistent_workers=True)
    epoch = iter(loader)
    seen = [next(epoch).tolist(), next(epoch).tolist()]
    aside = batches_aside(loader)
    assert aside is not loader and [b.tolist() for b in aside][:1] == [[0, 1]]
    seen += [b.tolist() for b in epoch]  # the interrupted epoch goes on where it was
    assert seen == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]


def test_each_ddp_rank_draws_its_own_augmentations(tmp_path):
    from types import SimpleNamespace

    from cnnsuite.tasks.biomedical3d.datamodule import Biomedical3DDataModule

    folder = make_volume_folder(tmp_path / "volumes")
    dm = Biomedical3DDataModule(data_dir=str(folder), spatial_size=[12, 12, 12], batch_size=16, cache="none")
    dm.setup("fit")

    def first_batch(world_size, rank):
        dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, state=SimpleNamespace(fn="fit"))
        torch.manual_seed(0)  # seed_everything gives every rank the same seed
        return next(iter(dm.train_dataloader()))[0]

    assert torch.equal(first_batch(2, 0), first_batch(2, 0))
    assert not torch.equal(first_batch(2, 0), first_batch(2, 1))
    assert torch.equal(first_batch(1, 0), first_batch(1, 0))


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
