"""Which checkpoint is "best", and how long a schedule lasts: both follow the task and the
run unless the config says otherwise."""

import csv
import math
import warnings

import lightning as L
import pytest
import torch
import yaml
from cnnsuite.tasks.detection2d.module import DetectionModule
from cnnsuite.tasks.localization2d.module import LocalizationModule
from cnnsuite.tasks.multispectral3d.module import MultispectralModule
from cnnsuite.tasks.recognition2d.module import RecognitionModule
from cnnsuite.tasks.video3d.module import VideoClassificationModule
from conftest import fit, script_val_acc
from test_long_runs import best_state, val_scores
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import ClasswiseWrapper

from cnnsuite.cli import main
from cnnsuite.training.schedules import CosineAnnealingLR


@pytest.fixture
def scripted_val_acc(monkeypatch):
    """val/acc per epoch as scripted: the best epoch (1) is neither the first nor the last."""
    scripted = {0: 0.594, 1: 0.9, 2: 0.813}
    script_val_acc(monkeypatch, scripted)
    return scripted


def test_a_monitor_without_a_mode_keeps_the_best_by_its_direction(tmp_path, image_folder, scripted_val_acc):
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--data.batch_size", "8",
              "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1", "--evaluate", "false",
              "--checkpoint.monitor", "val/acc")  # fmt: skip
    assert val_scores(run) == pytest.approx(scripted_val_acc)
    best = run / "checkpoints" / "best.ckpt"
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert best_state(best)["best_model_score"] == pytest.approx(0.9)
    saved = yaml.safe_load((run / "config.yaml").read_text())["checkpoint"]
    assert (saved["monitor"], saved["mode"]) == ("val/acc", "max")


@pytest.mark.parametrize(("epochs", "validated"), [(4, [1, 3]), (3, [0, 1, 2]), (1, [0])])
def test_validation_every_second_epoch_also_scores_the_last(tmp_path, image_folder, epochs, validated):
    """Lightning validates only the epochs that are a multiple of ``check_val_every_n_epoch``;
    where the last is not one, the interval becomes one that divides the run, so the final
    weights are scored and ``best.ckpt`` is written even by a run shorter than the interval."""
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--data.batch_size", "8",
              "--trainer.max_epochs", str(epochs), "--trainer.check_val_every_n_epoch", "2",
              "--evaluate", "false")  # fmt: skip
    assert sorted(val_scores(run)) == validated
    assert torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] in validated


def test_how_often_a_run_validates_does_not_change_its_training(tmp_path, image_folder):
    """PreciseBatchNorm draws its batches (shuffled, augmented) before each validation without
    moving the generators the training draws from: validating every epoch or every second one
    trains the same weights. (Over 4 epochs: a run of 3 validated every second epoch validates
    every epoch, :class:`~cnnsuite.training.callbacks.ValidateLastEpoch`.)"""
    weights = []
    for every in (1, 2):
        run = fit("recognition2d", tmp_path / str(every), "--data.data_dir", str(image_folder),
                  "--data.batch_size", "8", "--trainer.max_epochs", "4",
                  "--trainer.check_val_every_n_epoch", str(every), "--evaluate", "false")  # fmt: skip
        weights.append(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_an_epoch_that_ties_the_best_score_replaces_the_best_checkpoint(tmp_path, image_folder, monkeypatch):
    """A small validation split saturates: of the epochs that tie, the latest (most trained) is best."""
    script_val_acc(monkeypatch, {0: 0.5, 1: 0.9, 2: 0.9, 3: 0.8})
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--data.batch_size", "8",
              "--trainer.max_epochs", "4", "--trainer.check_val_every_n_epoch", "1", "--evaluate", "false")  # fmt: skip
    best = run / "checkpoints" / "best.ckpt"
    assert torch.load(best, weights_only=True)["epoch"] == 2
    assert best_state(best)["best_model_score"] == pytest.approx(0.9)


def test_print_config_shows_the_resolved_monitor_and_mode(capsys):
    cases = [([], ("val/acc", "max")), (["--checkpoint.monitor", "val/loss"], ("val/loss", "min")),
             (["--checkpoint.monitor", "val/acc", "--checkpoint.mode", "min"], ("val/acc", "min")),
             (["--checkpoint.mode", "min"], ("val/acc", "min"))]  # a mode alone is the task's monitor's  # fmt: skip
    for args, expected in cases:
        with pytest.raises(SystemExit):
            main(["fit", "--config", "tasks/recognition2d/config.yaml", *args, "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)["checkpoint"]
        assert (printed["monitor"], printed["mode"]) == expected


def test_a_top_k_past_one_is_refused_as_best_ckpt_is_one_file(tmp_path, capsys):
    """best.ckpt is one file: with save_top_k 3 every one of the first epochs entered the top k
    and replaced it, so best.ckpt was the latest epoch, not the best."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "tasks/recognition2d/config.yaml", "--checkpoint.save_top_k", "3",
              "--data.data_root", str(tmp_path / "data"),
              "--trainer.default_root_dir", str(tmp_path / "runs")])  # fmt: skip
    assert exit_info.value.code == 2 and not (tmp_path / "data").exists()
    assert "checkpoint.save_top_k=3: expected 1 (best.ckpt, the best epoch so far) or 0" in capsys.readouterr().err


def test_an_unknown_monitor_is_named_with_the_keys_that_are_logged(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "tasks/recognition2d/config.yaml", "--data.data_root", str(tmp_path / "data"),
              "--checkpoint.monitor", "val/accuracy"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert "checkpoint.monitor='val/accuracy'" in err and "val/acc" in err and "val/f1" in err and "val/map" in err
    assert not (tmp_path / "data").exists()


def test_a_monitored_key_the_validation_does_not_log_is_named_before_training(tmp_path, image_folder):
    """``val/acc_mcro`` passes the task's name check (``acc_`` starts ``acc_macro``); the
    sanity check's validation shows it is not logged, and the run stops there, before its
    first training step, naming the keys it does log. A per-class key (``val/acc/<class>``),
    which only the data decides, is logged and kept."""
    from cnnsuite.errors import ConfigError

    args = ("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", "--evaluate", "false")  # fmt: skip
    with pytest.raises(ConfigError, match=r"checkpoint.monitor 'val/acc_mcro': the validation logs no such value; "
                                          r"it logs val/acc, val/acc_macro, .*val/acc/cat"):  # fmt: skip
        fit(*args, "--checkpoint.monitor", "val/acc_mcro")
    assert not (tmp_path / "runs" / "version_0" / "checkpoints").exists(), "trained before naming the key"
    # without a sanity check: named at the end of the first validation, not by Lightning's traceback
    with pytest.raises(ConfigError, match=r"checkpoint.monitor 'val/acc_mcro': the validation logs no such value"):
        fit(*args, "--checkpoint.monitor", "val/acc_mcro", "--trainer.num_sanity_val_steps", "0")
    fit(*args, "--checkpoint.monitor", "val/acc/cat")
    assert (tmp_path / "runs" / "version_2" / "checkpoints" / "best.ckpt").is_file()


def test_a_plateau_schedule_on_a_validation_key_is_checked_before_training(tmp_path, image_folder):
    """``ReduceLROnPlateau`` reads its monitor after every epoch: Lightning stopped the run after
    the first epoch where the configs validate every second one, and only then named a
    mistyped key. Both are one line before the first training step; a schedule the run can
    feed trains."""
    from cnnsuite.errors import ConfigError

    args = ("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "1", "--evaluate", "false",
            "--lr_scheduler", "ReduceLROnPlateau")  # fmt: skip
    every_2 = r"lr_scheduler.monitor 'val/loss' is read after every epoch, but the validation runs every 2 epochs"
    with pytest.raises(ConfigError, match=every_2):
        fit(*args, "--lr_scheduler.monitor", "val/loss", "--trainer.check_val_every_n_epoch", "2")
    with pytest.raises(ConfigError, match=r"lr_scheduler.monitor 'val/lss': the validation logs no such value"):
        fit(*args, "--lr_scheduler.monitor", "val/lss", "--trainer.check_val_every_n_epoch", "1")
    assert not list((tmp_path / "runs").glob("version_*/checkpoints")), "trained before naming the key"
    run = fit(*args, "--lr_scheduler.monitor", "val/loss", "--trainer.check_val_every_n_epoch", "1")
    assert (run.parent / "version_2" / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.parametrize(
    "module",
    [RecognitionModule, MultispectralModule, VideoClassificationModule, LocalizationModule, DetectionModule],
)
def test_every_logged_metric_has_the_direction_its_torchmetric_declares(module):
    """``metric_modes`` is the task's word on each key; torchmetrics' ``higher_is_better`` is
    the metric's own: they must agree for every metric the task logs in validation."""
    model = module(num_classes=3, in_channels=3)
    for name, metric in model.val_metrics.items(keep_base=True):
        expected = "max" if metric.higher_is_better else "min"
        if isinstance(metric, ClasswiseWrapper):  # logged as <prefix><class>
            name = f"{metric._prefix}{model.class_names[0]}"
        assert module.mode_of(f"val/{name}") == expected, name
    assert module.mode_of("val/loss") == module.mode_of("train/loss") == "min"
    assert module.mode_of(module.monitor) == module.mode


def test_a_key_takes_the_direction_of_the_longest_name_it_starts_with():
    """A task's own key whose name begins with another key's (``loss`` and ``loss_gain``) keeps
    its own direction: the longest known name that the key is, or starts with, decides."""

    class Gains(RecognitionModule):
        metric_modes = {**RecognitionModule.metric_modes, "loss_gain": "max"}

    assert Gains.mode_of("val/loss_gain") == Gains.mode_of("val/loss_gain/3") == "max"
    assert Gains.mode_of("val/loss") == Gains.mode_of("val/loss_box") == "min"


def lr_by_epoch(run):
    """The learning rate LearningRateMonitor logged at the start of each epoch (its rows carry
    the step, not the epoch)."""
    with (run / "metrics.csv").open() as f:
        return {epoch: float(r["lr-AdamW"]) for epoch, r in enumerate(r for r in csv.DictReader(f) if r["lr-AdamW"])}


def test_the_cosine_schedule_follows_max_epochs_and_the_lr_is_logged(tmp_path, image_folder):
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--data.batch_size", "8",
              "--trainer.max_epochs", "4", "--evaluate", "false",
              "--lr_scheduler", "cnnsuite.training.schedules.CosineAnnealingLR")  # fmt: skip
    lr = lr_by_epoch(run)
    base = 0.003  # the config's AdamW lr
    expected = {e: base * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)}
    assert lr == pytest.approx(expected, rel=1e-4)


def test_a_run_resumed_with_more_epochs_anneals_over_its_new_length(tmp_path, image_folder):
    """Resumed from 2 epochs to 4, the schedule is the 4-epoch cosine from there on; torch's
    recursive form went on from the 2-epoch curve's end and trained the extra epochs at 0."""
    args = ["--data.data_dir", str(image_folder), "--data.batch_size", "8", "--evaluate", "false",
            "--lr_scheduler", "cnnsuite.training.schedules.CosineAnnealingLR"]  # fmt: skip
    fit("recognition2d", tmp_path, *args, "--trainer.max_epochs", "2")
    run = fit("recognition2d", tmp_path, *args, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    expected = {e: 0.003 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (2, 3)}
    assert {e: lr for e, lr in lr_by_epoch(run).items() if e >= 2} == pytest.approx(expected, rel=1e-4)


def test_a_given_t_max_is_kept(tmp_path, image_folder):
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--data.batch_size", "8",
              "--trainer.max_epochs", "2", "--evaluate", "false",
              "--lr_scheduler", "cnnsuite.training.schedules.CosineAnnealingLR",
              "--lr_scheduler.T_max", "8")  # fmt: skip
    assert lr_by_epoch(run)[1] == pytest.approx(0.003 * (1 + math.cos(math.pi / 8)) / 2, rel=1e-4)


def test_a_run_counted_in_steps_anneals_each_step_over_max_steps(tmp_path):
    """Without ``max_epochs`` the schedule's length is ``max_steps`` and it steps every step: a
    run of 6 steps over epochs of 2 batches anneals over the 6, not by epochs or over 1."""

    class Rates(L.Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    model = RecognitionModule(num_classes=2, backbone_kwargs={"channels": [4], "norm": "none"})

    def optimizers():
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        return {"optimizer": optimizer, "lr_scheduler": CosineAnnealingLR(optimizer)}

    model.configure_optimizers = optimizers
    rates = Rates()
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[rates], default_root_dir=tmp_path)  # fmt: skip
    data = TensorDataset(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=2))
    assert rates.lrs == pytest.approx([(1 + math.cos(math.pi * step / 6)) / 2 for step in range(6)])


@pytest.mark.parametrize("task", ["localization2d", "detection2d"])
def test_the_cosine_configs_leave_the_length_to_the_run(task):
    """A ``T_max`` in a task's config would have to be kept equal to ``max_epochs`` by hand."""
    config = yaml.safe_load(open(f"tasks/{task}/config.yaml"))
    assert config["lr_scheduler"]["class_path"] == "cnnsuite.training.schedules.CosineAnnealingLR"
    assert "T_max" not in (config["lr_scheduler"].get("init_args") or {})


def test_an_early_stopping_that_waits_for_accuracy_to_fall_is_named(tmp_path, image_folder):
    """Lightning's EarlyStopping waits for its monitor to fall unless told otherwise: on val/acc
    it stopped a run that was improving, without a word."""
    args = ["--data.data_dir", str(image_folder), "--data.batch_size", "8", "--trainer.max_epochs", "1",
            "--evaluate", "false", "--trainer.callbacks+=EarlyStopping",
            "--trainer.callbacks.monitor=val/acc"]  # fmt: skip
    with pytest.warns(UserWarning, match=r"EarlyStopping\(monitor='val/acc'\) has mode 'min', but val/acc is better "
                      r"higher: .* give --trainer.callbacks.mode=max"):  # fmt: skip
        fit("recognition2d", tmp_path / "a", *args)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="(?!EarlyStopping)")
        fit("recognition2d", tmp_path / "b", *args, "--trainer.callbacks.mode=max")


def test_a_run_without_a_best_checkpoint_says_why(tmp_path, image_folder, capsys):
    """It used to say "no checkpoint was saved (fast_dev_run?)" whatever the reason."""
    fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--data.batch_size", "8",
        "--trainer.max_epochs", "1", "--checkpoint.save_top_k", "0")  # fmt: skip
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    said = capsys.readouterr().out
    assert f"no best.ckpt (checkpoint.save_top_k is 0): nothing to evaluate; last.ckpt: {last}" in said


def test_following_a_new_length_moves_the_rates_and_their_record_at_once():
    """A resumed run's optimizer holds the rate of its old length; follow() puts it, and what
    ``get_last_lr()`` reports, on the new curve before the next epoch trains."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = CosineAnnealingLR(optimizer)  # a length of 1 until follow()
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    scheduler.follow(4)
    expected = (1 + math.cos(math.pi / 4)) / 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert scheduler.get_last_lr() == pytest.approx([expected])
