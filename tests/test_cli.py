"""The command table and config mistakes: every check here ends before any data or training
(help, ``--print_config``, or an error raised while parsing)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from cnnsuite.cli import main
from cnnsuite.contract import task_entry_points

CONFIG = str(ROOT / "tasks" / "recognition2d" / "config.yaml")
COMMANDS = ("fit", "validate", "test", "evaluate", "predict", "export", "inspect", "serve", "sweep", "bench")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``cnnsuite ARGV``'s exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def one_line_error(capsys, *argv: str) -> str:
    """The error of ``cnnsuite ARGV``: exit status 2 and one line on stderr."""
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def test_help_lists_every_command_with_one_line(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", out, re.MULTILINE), f"{name} is not listed:\n{out}"


def test_the_console_script_prints_the_table_without_importing_torch():
    """``cnnsuite --help`` is read before any command runs: it must not wait for torch and
    Lightning to import."""
    code = (
        "import sys; from cnnsuite.commands import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'jsonargparse') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "evaluate" in result.stdout and "serve" in result.stdout
    script = Path(sys.executable).with_name("cnnsuite")
    if script.exists():  # the installed console script goes the same way
        entry = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert entry.returncode == 0 and "bench" in entry.stdout


def test_the_cli_reference_is_what_the_commands_say(monkeypatch):
    """docs/cli.md is written from the command table and each command's own --help: an option
    added, renamed or described anew without ``make docs`` fails here. The width it wraps the
    help to is not left behind for the process's later help."""
    from cnnsuite.commands import reference

    monkeypatch.delenv("COLUMNS", raising=False)
    written = (ROOT / "docs" / "cli.md").read_text()
    assert written == reference(), "docs/cli.md is out of date: run make docs"
    assert "COLUMNS" not in os.environ
    for name in COMMANDS:
        assert f"## {name}\n" in written


def test_predict_help_is_the_file_predictors_and_says_where_lightnings_predict_went(capsys):
    code, out, _ = run(capsys, "predict", "--help")
    assert code == 0
    assert "--input" in out and "--ckpt" in out and "--trainer" not in out
    assert "LightningCLI's own predict" in out
    code, _, err = run(capsys, "predict", "--config", CONFIG)
    assert code == 2 and "LightningCLI's own predict" in err.strip().splitlines()[-1]


def test_a_mistyped_key_is_one_line_naming_the_closest_keys(capsys, tmp_path):
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--trainer.max_epocs", "1", "--print_config")
    assert error.startswith("cnnsuite fit: error: unknown key trainer.max_epocs") and "trainer.max_epochs" in error
    # in a config file, and among a class's own arguments
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_epocs: 1\n")
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--config", str(tmp_path / "typo.yaml"), "--print_config")
    assert "trainer.max_epocs" in error and "trainer.max_epochs" in error
    error = one_line_error(capsys, "fit", "--task", "recognition2d", "--config", str(tmp_path / "typo.yaml"))
    assert "unknown key trainer.max_epocs: did you mean trainer.max_epochs" in error  # jsonargparse: 'Subcommand'
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--data.batch_sze", "3", "--print_config")
    assert "unknown key data.batch_sze: did you mean data.batch_size" in error
    # another task's name for an option: the same first words
    error = one_line_error(
        capsys, "fit", "--task", "localization2d", "--data.on_bad_annotation", "skip", "--print_config"
    )
    assert "unknown key data.on_bad_annotation: did you mean data.on_bad_file?" in error


def test_abbreviated_options_are_refused(capsys):
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--trainer.max_epoch", "1", "--print_config")
    assert "unknown key trainer.max_epoch " in error and "trainer.max_epochs" in error
    # a command's own options: the one it stood for named, in one line, not 'required: --ckpt' under the usage
    _, _, err = run(capsys, "evaluate", "--ckp", "missing.ckpt")
    assert err == "cnnsuite evaluate: error: unknown option --ckp: did you mean --ckpt?\n"
    _, _, err = run(capsys, "predict", "--ckpt", "best.ckpt", "--inptu", "photos")
    assert err == "cnnsuite predict: error: unknown option --inptu: did you mean --input?\n"


def test_fit_without_a_config_lists_the_configs(capsys):
    error = one_line_error(capsys, "fit")
    assert "--config" in error
    for task in ("recognition2d", "localization2d", "detection2d", "biomedical3d", "video3d", "multispectral3d"):
        assert f"{task}/config.yaml" in error


def test_an_unknown_command_is_one_line_naming_the_commands(capsys):
    error = one_line_error(capsys, "evalute", "--ckpt", "x.ckpt")
    assert error.startswith("cnnsuite: error: unknown command 'evalute'") and "did you mean evaluate" in error
    assert all(name in error for name in COMMANDS)


def test_a_bug_keeps_its_traceback_and_a_user_error_is_one_line(tmp_path, monkeypatch, capsys):
    """Told apart by type: a ValueError from inside the code is a bug and propagates; the same
    place raising a UserError prints one line and exits 2."""
    import cnnsuite.trust.checkpoint
    from cnnsuite.errors import BadFileError

    def fail(error):
        def load(path):
            raise error

        return load

    monkeypatch.setattr(cnnsuite.trust.checkpoint, "load_checkpoint", fail(ValueError("an internal mistake")))
    with pytest.raises(ValueError, match="an internal mistake"):
        main(["evaluate", "--ckpt", str(tmp_path / "x.ckpt")])

    def mishandled(path):  # a bug while handling a user's error: the bug's traceback, not the user's line
        try:
            raise FileNotFoundError(f"{path}: no such file")
        except OSError:
            return {}["a key the code forgot"]

    monkeypatch.setattr(cnnsuite.trust.checkpoint, "load_checkpoint", mishandled)
    with pytest.raises(KeyError, match="a key the code forgot"):
        main(["evaluate", "--ckpt", str(tmp_path / "x.ckpt")])
    monkeypatch.setattr(cnnsuite.trust.checkpoint, "load_checkpoint", fail(BadFileError("x.ckpt: not a checkpoint")))
    assert one_line_error(capsys, "evaluate", "--ckpt", str(tmp_path / "x.ckpt")).endswith("x.ckpt: not a checkpoint")


def test_a_fit_shows_no_third_party_tips_or_deprecations(tmp_path, image_folder, caplog):
    """Lightning's cloud-service tips and warnings about a library's use of another library are
    nothing a user can act on: a fit does not show them."""
    import warnings

    from conftest import fit

    caplog.set_level("INFO")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", "--evaluate", "false")  # fmt: skip
    assert "Seed set to 0" in caplog.text  # Lightning's own information still shows
    assert "Tip:" not in caplog.text
    assert not [w for w in caught if "LeafSpec" in str(w.message)], [str(w.message) for w in caught]


def test_the_devices_found_are_said_once_not_by_each_trainer(tmp_path, image_folder, caplog):
    """A fit and the evaluation after it each build a Trainer, which each say which devices
    they found: the terminal shows those lines once."""
    from conftest import fit

    caplog.set_level("INFO")
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "1")  # fmt: skip
    assert (run / "evaluation" / "metrics.json").is_file()
    assert caplog.text.count("GPU available:") <= 1 and caplog.text.count("TPU available:") <= 1


def test_a_best_checkpoint_named_otherwise_is_evaluated_in_its_run_folder(tmp_path, image_folder, monkeypatch):
    """A Lightning filename template (``{val/acc}`` makes a subfolder) or another checkpoint
    folder does not move the evaluation after fit out of the run folder, into the current one."""
    from conftest import fit

    monkeypatch.chdir(tmp_path)
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "1", "--checkpoint.filename", "{epoch}-{val/acc:.2f}")  # fmt: skip
    assert (run / "evaluation" / "metrics.json").is_file()
    assert not (tmp_path / "evaluation").exists()


def test_a_checkpoint_folder_holding_checkpoints_is_refused_before_they_are_replaced(tmp_path, image_folder):
    from conftest import fit

    from cnnsuite.errors import ConfigError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.ckpt").write_text("another run's")
    (mine / "last.ckpt").write_text("another run's")
    with pytest.raises(ConfigError, match=rf"checkpoint.dirpath {mine}: holds best.ckpt, last.ckpt, which"):
        fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", "--evaluate", "false", "--checkpoint.dirpath", str(mine))  # fmt: skip
    assert {p.read_text() for p in mine.iterdir()} == {"another run's"}


def test_a_class_missing_from_the_sanity_checks_batches_is_no_warning():
    """Lightning validates two batches before training; where they hold some of the classes
    only, torchmetrics' ROC warns about the others, which tells the user nothing."""
    import warnings

    import torch
    from torchmetrics.classification import MulticlassAUROC

    from cnnsuite.cli import quiet_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        MulticlassAUROC(num_classes=3)(torch.rand(4, 3).softmax(1), torch.tensor([0, 0, 1, 1]))
    assert not caught, [str(w.message) for w in caught]


def test_reading_a_dicom_series_shows_no_notice_about_a_gpu_decoder(tmp_path, caplog):
    """MONAI says on every DICOM reader it builds that an optional GPU decoder (nvImageCodec) is
    not installed, once as a log line and once as a warning: nothing a user can act on."""
    import warnings

    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed
    from test_newcomer import write_dicom_series

    from cnnsuite.cli import quiet_third_party

    write_dicom_series(tmp_path / "series", np.zeros((4, 8, 8)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        volume = LoadVolumed()({"image": str(tmp_path / "series")})["image"]
    assert volume.shape == (1, 8, 8, 4)
    assert "nvImageCodec" not in caplog.text
    assert not [w for w in caught if "nvImageCodec" in str(w.message)], [str(w.message) for w in caught]


def test_the_model_summary_fits_100_columns_and_lists_what_runs(monkeypatch):
    """A staged backbone's per-stage outputs are one short cell, not a list wrapped over rows;
    the loss and metrics (no parameters, never run in forward) are left out."""
    import io

    import rich
    import torch
    from lightning.pytorch.utilities.model_summary import ModelSummary
    from rich.console import Console

    from cnnsuite.training.callbacks import CompactModelSummary
    from cnnsuite.training.classification import ClassificationModule

    model = ClassificationModule(num_classes=10, backbone_kwargs={"channels": [16, 32, 64, 128]})
    model.example_input_array = torch.zeros(2, 1, 32, 32)
    summary = ModelSummary(model, max_depth=1)
    console = Console(width=100, file=io.StringIO(), record=True)
    monkeypatch.setattr(rich, "get_console", lambda: console)
    CompactModelSummary.summarize(summary._get_summary_data(), summary.total_parameters, summary.trainable_parameters,
                                  summary.model_size, summary.total_training_modes, summary.total_flops)  # fmt: skip
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [row.split("│")[2].strip() for row in rows] == ["backbone", "head"]
    assert "4 maps, 2×128×2×2" in text and "2×1×32×32" in text
    assert max(map(len, text.splitlines())) <= 100


def test_a_fit_ends_with_one_line_saying_what_it_gave(tmp_path, image_folder, capsys):
    from conftest import fit

    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "1")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    best = run / "checkpoints" / "best.ckpt"
    assert re.fullmatch(
        rf"result: {re.escape(str(best))} \(val/acc \d\.\d{{4}}\); test/acc {metrics['test/acc']:.4f}; "
        rf"evaluation in {re.escape(str(run / 'evaluation'))}/",
        last,
    ), last
    run = fit("recognition2d", tmp_path / "unevaluated", "--data.data_dir", str(image_folder),
              "--trainer.max_epochs", "1", "--evaluate", "false")  # fmt: skip
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert not (run / "evaluation").exists()
    assert re.fullmatch(rf"result: {re.escape(str(run / 'checkpoints' / 'best.ckpt'))} \(val/acc \d\.\d{{4}}\); "
                        r"not evaluated \(--evaluate false\)", last), last  # fmt: skip


def test_a_task_is_trained_by_name_from_a_folder_outside_the_repository(tmp_path, image_folder):
    """``pip install <repo>`` (a wheel, not this checkout) and ``cnnsuite fit --task NAME`` from
    any folder: the task's packaged config is found, runs go to ``runs/<task>`` there."""
    site, outside, source = tmp_path / "site", tmp_path / "outside", tmp_path / "source"
    # built from a copy: a build in the checkout leaves build/ behind, which a later editable
    # install of the checkout would take its package list from
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    for part in ("src", "tasks"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)  # fmt: skip
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-m", "cnnsuite", "fit", "--task", "recognition2d", "--data.data_dir", str(image_folder),
         "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.enable_progress_bar", "false",
         "--evaluate", "false"],
        cwd=outside, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (outside / "runs" / "recognition2d" / "version_0" / "checkpoints" / "best.ckpt").is_file()
    config = (outside / "runs" / "recognition2d" / "version_0" / "config.yaml").read_text()
    assert "cnnsuite.tasks.recognition2d.module.RecognitionModule" in config
    assert not (outside / "data").exists()  # the user's folder is read where it is
    unknown = subprocess.run([sys.executable, "-m", "cnnsuite", "fit", "--task", "nope"], cwd=outside, env=env,
                             capture_output=True, text=True)  # fmt: skip
    names = ", ".join(p.name for p in task_entry_points())  # ours, and any task package installed beside them
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        f"cnnsuite fit: error: --task 'nope': expected one of {names}"
    ]
    assert {"biomedical3d", "detection2d", "localization2d", "multispectral3d", "recognition2d", "video3d"} <= set(
        names.split(", ")
    )


@pytest.mark.parametrize(
    "option,value,said",
    [
        ("--data.num_workers", "lots", "data.num_workers: expected 'auto' or an integer, got 'lots'"),
        ("--data.batch_size", "many", "data.batch_size: expected an integer, got 'many'"),
        ("--trainer.max_epochs", "x", "trainer.max_epochs: expected an integer, got 'x'"),
        ("--model.backbone_kwargs", "3", "model.backbone_kwargs: expected a mapping ({key: value}), got '3'"),
        # a key that takes a class too: its base class named, not only the other types
        (
            "--trainer.logger",
            "CSVLoger",
            "trainer.logger: expected a Logger class (its name or class_path), a list "
            "([a, b]), or true or false, got 'CSVLoger'",
        ),
        (
            "--trainer.callbacks",
            "EarlyStoping",
            "trainer.callbacks: expected a Callback class (its name or "
            "class_path) or a list ([a, b]), got 'EarlyStoping'",
        ),
        (
            "--trainer.logger.init_args.save_dir",
            "3",
            "trainer.logger.init_args.save_dir: trainer.logger names no "
            "class to give save_dir to; give --trainer.logger CLASS before it",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_what_it_takes(capsys, option, value, said):
    """jsonargparse's account of every Union it tried (a class path, NestedArg, NoneType) is
    said as the key typed, what it takes and what it got."""
    assert one_line_error(capsys, "fit", "--config", CONFIG, option, value) == f"cnnsuite fit: error: {said}"


def test_a_network_too_deep_for_the_data_is_one_line(capsys):
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--data.image_size", "8")
    assert error == (
        "cnnsuite fit: error: the data's samples of shape (1, 8, 8) are 8x8 where the backbone's total stride is "
        "16x16: use larger samples (data.*) or fewer or gentler pooling stages (model.backbone_kwargs)"
    )


def test_a_network_of_more_axes_than_the_data_is_one_line(capsys):
    """multispectral3d's ``channels`` layout makes 2D samples for a config's 3D network: it
    ended in a traceback from the stride check's ``zip``. Any task alike: 2D digits, a 3D net."""
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--model.spatial_dims", "3")
    assert error == (
        "cnnsuite fit: error: the data's samples of shape (1, 32, 32) have 2 spatial axes where the model's network "
        "has 3: give model.spatial_dims 2, or data settings that make 3D samples"
    )


def test_a_monitor_the_model_never_logs_is_one_line(capsys, tmp_path, image_folder):
    """``val/map`` is a classifier's key only in multi-label runs: the sanity check's validation
    finds it missing and says which keys there are, on one line."""
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--data.data_dir", str(image_folder),
                           "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
                           "--checkpoint.monitor", "val/map")  # fmt: skip
    assert error.startswith("cnnsuite fit: error: checkpoint.monitor 'val/map': the validation logs no such value")


def test_a_trainer_setting_lightning_refuses_is_one_line(capsys, tmp_path):
    """Lightning checks some trainer settings only when it makes the Trainer and refuses them
    with its ``MisconfigurationException``: the config's mistake, one line, not a traceback."""
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--trainer.default_root_dir", str(tmp_path),
                           "--trainer.fast_dev_run", "-1")  # fmt: skip
    assert error == "cnnsuite fit: error: fast_dev_run=-1 is not a valid configuration. It should be >= 0."


def test_main_called_from_a_script_with_its_own_arguments_is_still_one_line(capsys, monkeypatch):
    """``cnnsuite.cli.main([...])`` from a program that has a command line of its own (a
    notebook, a test runner): that command line is not cnnsuite's, and LightningCLI's warning
    about it, printed on stderr, would make a one-line error two."""
    import warnings

    monkeypatch.setattr(sys, "argv", ["their_script.py", "--their-flag", "1"])
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        line = one_line_error(capsys, "fit", "--config", CONFIG, "--trainer.max_epocs", "1")
        assert "trainer.max_epochs" in line
        # --task made into --config for the DDP ranks' command line: the caller's is not written over
        line = one_line_error(capsys, "fit", "--task", "recognition2d", "--trainer.max_epocs", "1")
        assert "trainer.max_epochs" in line
    assert not [w for w in shown if "args parameter" in str(w.message)]
    assert sys.argv == ["their_script.py", "--their-flag", "1"]


def test_a_value_the_optimizer_refuses_is_one_line_naming_it(capsys, tmp_path, image_folder):
    """torch's optimizers check their values when LightningCLI makes them, just before fit: a
    negative learning rate is the config's mistake, not a traceback."""
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--data.data_dir", str(image_folder),
                           "--trainer.default_root_dir", str(tmp_path), "--optimizer.lr", "-1")  # fmt: skip
    assert error.startswith("cnnsuite fit: error: optimizer torch.optim.AdamW")
    assert error.endswith("Invalid learning rate: -1.0")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--data.batch_size", "0", "data.batch_size=0: expected a count of samples, 1 or more"),
        ("--data.batch_size", "-3", "data.batch_size=-3: expected a count of samples, 1 or more"),
        ("--model.label_smoothing", "2", "model.label_smoothing=2.0: expected a fraction from 0 to 1"),
    ],
)
def test_a_value_torch_would_refuse_mid_run_is_one_line_before_it(capsys, tmp_path, image_folder, option, value,
                                                                   expected):  # fmt: skip
    """torch's sampler checks the batch size and its loss the label smoothing only when the
    first batch is drawn or the first loss taken, in a traceback: each is the config's mistake."""
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--data.data_dir", str(image_folder),
                           "--trainer.default_root_dir", str(tmp_path), option, value)  # fmt: skip
    assert error == f"cnnsuite fit: error: {expected}"


def test_a_config_file_that_is_not_yaml_is_named_with_the_place(capsys, tmp_path):
    """jsonargparse said where the mistake is ("line 3, column 23") but not in which file
    ("<unicode string>"), and a run may merge several configs."""
    bad = tmp_path / "mine.yaml"
    bad.write_text("trainer:\n  max_epochs: 3\n  devices: 1: 2\n")
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--config", str(bad))
    assert error == (f"cnnsuite fit: error: {bad}: not YAML (mapping values are not allowed here, line 3, column 13)")
    assert one_line_error(capsys, "fit", "-c", CONFIG, "-c", str(bad)) == error  # -c is --config
    binary = tmp_path / "mine.yaml.gz"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--config", str(binary))
    assert error.startswith(f"cnnsuite fit: error: {binary}: cannot be read ('utf-8' codec can't decode")


def test_ckpt_path_last_before_any_run_starts_afresh(capsys, tmp_path):
    """A job that requeues itself with ``--ckpt_path last`` has no ``last.ckpt`` on its first start:
    it begins a new run, as its config printed says, instead of failing on a file named ``last``."""
    import yaml

    code, out, _ = run(capsys, "fit", "--config", CONFIG, "--trainer.default_root_dir", str(tmp_path / "runs"),
                       "--ckpt_path", "last", "--print_config")  # fmt: skip
    assert code == 0 and yaml.safe_load(out)["ckpt_path"] is None


def test_the_data_paths_a_run_records_are_absolute_and_a_url_is_kept(tmp_path, monkeypatch):
    """``--data.data_dir ../my_images`` in a run's config.yaml named other data from the folder the
    config is reused in: the data's paths are recorded absolute, with ``~`` expanded; a URL is no path."""
    from jsonargparse import Namespace

    from cnnsuite.cli import absolute_data_paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    given = {"data_dir": "../my_images", "data_root": "~/data", "split_file": "s3://bucket/splits.json"}
    config = Namespace(data=Namespace(class_path="cnnsuite.tasks.recognition2d.datamodule.RecognitionDataModule",
                                      init_args=Namespace(**given, batch_size=4)))  # fmt: skip
    absolute_data_paths(config)
    assert config.data.init_args.as_dict() == {"data_dir": str(tmp_path.parent / "my_images"),
                                               "data_root": str(tmp_path / "home" / "data"),
                                               "split_file": "s3://bucket/splits.json", "batch_size": 4}  # fmt: skip


def test_a_recipe_fit_does_not_know_is_one_line_not_a_run_as_configured(capsys):
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--recipe", "fastest", "--print_config")
    assert error == "cnnsuite fit: error: recipe: expected 'auto' or 'configured', got 'fastest'"


def test_yaml_nested_past_the_recursion_limit_is_one_line_naming_the_file_or_option(capsys, tmp_path):
    """PyYAML and jsonargparse recurse once a level of lists: a few thousand ``[`` in a config
    file, in an option's value or in a file an option names ended in a RecursionError
    traceback, for every YAML the suite reads from the user."""
    from cnnsuite.commands import add_data, command_parser
    from cnnsuite.trust.checkpoint import data_options

    too_deep = "nested too deeply: more levels of lists and mappings than a reader follows"
    cut_short = tmp_path / "deep.yaml"
    cut_short.write_text("trainer:\n  max_epochs: " + "[" * 3000 + "\n")
    nested = "[" * 990 + "]" * 990  # well-formed: libyaml reads it, and jsonargparse recursed over it
    data = tmp_path / "data.yaml"
    data.write_text(f"init_args:\n  data_dir: {nested}\n")
    for config in (cut_short, data):
        error = one_line_error(capsys, "fit", "--config", CONFIG, "--config", str(config))
        assert error == f"cnnsuite fit: error: {config}: not YAML ({too_deep})"
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--data.init_args.data_dir", nested)
    assert error == f"cnnsuite fit: error: --data.init_args.data_dir: {too_deep}"
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--data", str(data))
    assert error == f"cnnsuite fit: error: --data {data}: {too_deep}"
    (tmp_path / "outer.yaml").write_text(f"data: {data}\n")
    error = one_line_error(capsys, "fit", "--config", CONFIG, "--config", str(tmp_path / "outer.yaml"))
    assert error == f"cnnsuite fit: error: a file named in a --config file: {too_deep}"
    error = one_line_error(capsys, "sweep", "--task", "recognition2d", "--space", str(cut_short), "--trials", "1")
    assert error == f"cnnsuite sweep: error: {cut_short}: not YAML ({too_deep})"
    error = one_line_error(capsys, "prepare", "--task", "recognition2d", "--config", str(cut_short), "--out",
                           str(tmp_path / "shards"))  # fmt: skip
    assert error == f"cnnsuite prepare: error: {cut_short}: not a readable config ({too_deep})"
    parser = command_parser("evaluate", description="")
    add_data(parser)
    args, extra = parser.parse_known_args(["--ckpt", "x.ckpt", "--data.batch_size", nested])
    with pytest.raises(SystemExit):
        data_options(args, extra, parser)
    assert capsys.readouterr().err.strip().endswith(f"is not a value ({too_deep})")


def test_a_tasks_config_is_parsed_once_before_jsonargparse_reads_it(capsys, monkeypatch):
    """``--task`` checks that its config is YAML and names its task's classes in one parse, not
    one for each check."""
    import yaml

    from cnnsuite.contract import task_named

    config = task_named("recognition2d").config
    parsed = []
    safe_load = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: parsed.append(text) or safe_load(text))
    code, _, _ = run(capsys, "fit", "--task", "recognition2d", "--print_config")
    assert code == 0 and parsed.count(config.read_text()) == 1


def test_a_run_stopped_by_sigterm_exits_143(monkeypatch):
    """Lightning ends a run on SIGTERM with a SystemExit that has no code, so the process
    exited 0 and a command chained after it with ``&&`` ran; 128 + 15 is the shell's status for
    a process ended by SIGTERM."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import cnnsuite.cli
    from cnnsuite.commands import main as console_script

    def stopped(argv=None):
        raise SIGTERMException

    monkeypatch.setattr(cnnsuite.cli, "main", stopped)
    with pytest.raises(SystemExit) as exit_info:
        console_script(["fit"])
    assert exit_info.value.code == 143


def test_a_metric_the_test_split_leaves_undefined_is_shown_as_not_available(tmp_path):
    """An AUROC of one class, or a class the split lacks, is NaN: ``null`` in metrics.json and
    ``n/a`` where people read it, not ``nan``."""
    from cnnsuite.cli import result_line

    line = result_line(tmp_path / "best.ckpt", "val/auroc", 0.75, {"test/auroc": float("nan")}, tmp_path)
    assert "(val/auroc 0.7500); test/auroc n/a;" in line


def test_cnnsuite_debug_in_the_environment_shows_the_traceback(capsys, monkeypatch):
    """``CNNSUITE_DEBUG=1`` is ``--debug`` (Lightning's DDP ranks learn of it that way): a mistake
    raises its own error, with its traceback, instead of one line; ``0`` is no debug."""
    from cnnsuite.errors import ConfigError

    monkeypatch.setenv("CNNSUITE_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown command 'evalute'"):
        main(["evalute"])
    monkeypatch.setenv("CNNSUITE_DEBUG", "0")
    assert one_line_error(capsys, "evalute").startswith("cnnsuite: error: unknown command 'evalute'")


def test_options_after_task_win_over_its_config_and_configs_after_it_merge_over_it(capsys, tmp_path):
    """``--task NAME`` stands where it is given, as ``--config`` would: the options and config files
    after it override its packaged config (batch size 64, 10 epochs), not the other way round."""
    import yaml

    (tmp_path / "mine.yaml").write_text("trainer:\n  max_epochs: 7\n")
    code, out, _ = run(capsys, "fit", "--task", "recognition2d", "--data.batch_size", "3",
                       "--config", str(tmp_path / "mine.yaml"), "--print_config")  # fmt: skip
    printed = yaml.safe_load(out)
    assert code == 0 and printed["data"]["init_args"]["batch_size"] == 3 and printed["trainer"]["max_epochs"] == 7
    assert printed["model"]["class_path"] == "cnnsuite.tasks.recognition2d.module.RecognitionModule"
    code, out, _ = run(capsys, "fit", "--task=recognition2d", "--trainer.max_epochs", "4", "--print_config")
    printed = yaml.safe_load(out)
    assert code == 0 and printed["trainer"]["max_epochs"] == 4 and printed["data"]["init_args"]["batch_size"] == 64


def test_h_is_help_and_cnnsuite_alone_is_the_table_as_a_mistake(capsys):
    """``cnnsuite -h`` is ``--help`` (the table on stdout, exit 0); ``cnnsuite`` alone, or with only
    ``--debug``, prints it on stderr and exits 2: a script that left out its command stops there."""
    code, out, err = run(capsys, "-h")
    assert code == 0 and all(name in out for name in COMMANDS) and not err
    for argv in ([], ["--debug"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and not out and all(name in err for name in COMMANDS)


def test_a_mistakes_control_characters_are_shown_escaped_not_obeyed():
    """A message may quote what a file holds (a checkpoint's recorded folder, a file's name): its
    terminal codes and carriage returns are shown escaped on the one line, not obeyed."""
    from cnnsuite.cli import user_message
    from cnnsuite.errors import BadFileError

    assert user_message(BadFileError("x.ckpt: reads \x1b[2J\rdata")) == "x.ckpt: reads \\x1b[2J\\rdata"


def test_an_error_without_a_message_from_a_loader_worker_is_still_one_line():
    """torch re-raises a worker's error as "Caught X in DataLoader worker process N. Original
    Traceback ..."; one raised without a message ends the traceback with its bare type name."""
    from cnnsuite.cli import user_message

    caught = ("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
              '  File "reader.py", line 3, in read\n    raise OSError\nOSError\n')  # fmt: skip
    assert user_message(OSError(caught)) == "OSError"


def test_a_data_option_whose_value_is_not_yaml_is_one_line_naming_it(capsys):
    """``cnnsuite evaluate --data.batch_size [`` (a value cut short) ended in PyYAML's traceback:
    the values of the ``--data.*`` options a rebuilt checkpoint takes are read as YAML."""
    from cnnsuite.commands import add_data, command_parser
    from cnnsuite.trust.checkpoint import data_options

    parser = command_parser("evaluate", description="")
    add_data(parser)
    args, extra = parser.parse_known_args(["--ckpt", "x.ckpt", "--data.batch_size", "["])
    with pytest.raises(SystemExit):
        data_options(args, extra, parser)
    err = capsys.readouterr().err.strip()
    assert "--data.batch_size: '[' is not a value (" in err and len(err.splitlines()) == 1
    args, extra = parser.parse_known_args(["--ckpt", "x.ckpt", "--data.batch_size", "4"])
    assert data_options(args, extra, parser)["batch_size"] == 4


def test_a_value_no_file_can_have_beside_one_nested_too_deeply_leaves_the_nested_one_named(capsys):
    """Looking for the option that nests too deeply, a value ending ``.yaml`` is tried as a file:
    a name longer than the system takes, or one under a ``~user`` unknown here, is text, not a
    "File name too long" line or a RuntimeError traceback in place of the option's line."""
    nested = "[" * 990 + "]" * 990
    for value in ("a" * 300 + ".yaml", "~no-such-user-here/data.yaml"):
        error = one_line_error(capsys, "fit", "--config", CONFIG, "--trainer.default_root_dir", value,
                               "--data.init_args.data_dir", nested)  # fmt: skip
        assert (
            error == "cnnsuite fit: error: --data.init_args.data_dir: nested too deeply: more levels of lists "
            "and mappings than a reader follows"
        )


def test_the_trainer_the_cli_builds_has_its_loggers_atomic_writes_and_a_summary_only_if_asked(tmp_path, image_folder):
    """``--trainer.logger true`` is the run's own loggers (CSV and TensorBoard in ``version_N``),
    not Lightning's ``lightning_logs``; checkpoints are written atomically unless the config names
    plugins of its own; ``--trainer.enable_model_summary false`` adds no summary."""
    from lightning.pytorch.callbacks import ModelSummary
    from lightning.pytorch.loggers import CSVLogger

    from cnnsuite.cli import CnnSuiteCLI
    from cnnsuite.training.runs import AtomicCheckpointIO

    def built(name: str, *extra: str):
        args = ["--config", CONFIG, "--data.data_dir", str(image_folder), "--trainer.default_root_dir",
                str(tmp_path / name), *extra]  # fmt: skip
        return CnnSuiteCLI(args=args, run=False).trainer

    trainer = built("given", "--trainer.logger", "true")
    assert Path(trainer.log_dir) == tmp_path / "given" / "version_0"
    assert any(isinstance(logger, CSVLogger) for logger in trainer.loggers)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert any(isinstance(callback, ModelSummary) for callback in trainer.callbacks)
    trainer = built("quiet", "--trainer.enable_model_summary", "false")
    assert not any(isinstance(callback, ModelSummary) for callback in trainer.callbacks)


def test_a_path_under_an_unknown_users_home_is_named_in_one_line(capsys, tmp_path, monkeypatch):
    """``~user/...`` for a user this machine does not have: pathlib's "Could not determine home
    directory" came as a traceback from wherever the path was first expanded."""
    from jsonargparse import Namespace

    from cnnsuite.cli import check_checkpoint_folders
    from cnnsuite.data.folders import lies_within

    user = "cnnsuite-no-such-user"
    assert os.path.expanduser(f"~{user}") == f"~{user}"  # no such user here
    monkeypatch.chdir(tmp_path)
    where = f"~{user}/d"
    for option, argv in [
        ("--config", ["fit", "--config", CONFIG, "--config", where]),
        ("--data.data_dir", ["fit", "--config", CONFIG, "--data.init_args.data_dir", where]),
        ("--data.split_file", ["fit", "--config", CONFIG, "--data.split_file", where]),
        ("--out", ["prepare", "--task", "recognition2d", "--data.data_root", "data", "--out", where]),
        ("--data.data_root", ["prepare", "--task", "recognition2d", "--data.data_root", where, "--out", "shards"]),
    ]:
        error = one_line_error(capsys, *argv)
        assert error.endswith(f"error: {option} {where}: no user {user} on this machine to expand ~{user}; "
                              "expected a path with a known home or none"), error  # fmt: skip
    # Lightning's own folders (default_root_dir, checkpoint.dirpath) take such a ~user as a relative folder's name
    assert not lies_within(f"~{user}/runs", tmp_path / "data")
    assert lies_within(f"~{user}/runs", tmp_path)
    check_checkpoint_folders(Namespace({"checkpoint.dirpath": where}))
