"""``cnnsuite sweep`` (Optuna over any config key, each trial a normal fit) and ``cnnsuite fit
--seeds``: on a tiny image folder, a trial is an epoch or two of a few batches."""

import json
import os
import re
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from conftest import ROOT, make_image_folder, script_val_acc
from test_cli import one_line_error

from cnnsuite.cli import main
from cnnsuite.errors import ConfigError

SPACE = {
    "optimizer.init_args.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
    "model.init_args.backbone_kwargs.channels": {"choices": [[4, 8, 16, 32], [8, 8, 16, 16]]},
    "trainer.max_epochs": {"low": 1, "high": 2},
}


def write_space(tmp_path, space=SPACE, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space))
    return str(path)


def fixed(tmp_path, image_folder) -> list[str]:
    """The settings every trial takes (options after the sweep's own)."""
    return [
        "--data.data_dir", str(image_folder),
        "--data.data_root", str(tmp_path / "data"),
        "--data.batch_size", "8",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


def sweep(*argv: str) -> None:
    main(["sweep", "--task", "recognition2d", *argv, "--debug"])


def states(storage: str, study: str = "sweep") -> list[str]:
    loaded = optuna.load_study(study_name=study, storage=storage)
    return [t.state.name for t in sorted(loaded.trials, key=lambda t: t.number)]


def test_a_sweep_writes_its_table_plots_and_a_best_config_that_fit_reproduces(
    tmp_path, image_folder, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # the default storage and results go under runs/recognition2d/sweeps/
    # trial 1 is pruned at its first validation: the pruning callback's TrialPruned reaches Optuna
    monkeypatch.setattr(optuna.pruners.MedianPruner, "prune", lambda self, study, trial: trial.number == 1)
    sweep("--space", write_space(tmp_path), "--trials", "4", *fixed(tmp_path, image_folder))
    out = tmp_path / "runs" / "recognition2d" / "sweeps" / "sweep"
    storage = f"sqlite:///{tmp_path / 'runs' / 'recognition2d' / 'sweeps' / 'sweep.db'}"
    assert states(storage) == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]

    trials = json.loads((out / "trials.json").read_text())
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert {"number", "params", "value", "state", "duration"} <= set(trials[0])
    assert set(trials[0]["params"]) == set(SPACE)
    assert isinstance(trials[0]["params"]["trainer.max_epochs"], int)  # integers stay integers
    assert trials[1]["state"] == "PRUNED" and trials[0]["value"] is not None
    for t in trials:  # each trial a run folder; a pruned one stopped at its first validation, unevaluated
        run = out / f"trial_{t['number']}" / "version_0"
        assert t["run"] == str(run) and (run / "config.yaml").is_file()
        assert yaml.safe_load((run / "config.yaml").read_text())["recipe"] == "configured"  # one recipe for all
        assert (run / "evaluation" / "metrics.json").is_file() == (t["state"] == "COMPLETE")
    table = (out / "trials.md").read_text()
    assert "PRUNED" in table and "optimizer.init_args.lr" in table
    assert (out / "history.png").stat().st_size > 0 and (out / "importance.png").stat().st_size > 0

    # the best trial's own config, taken as it is by fit: the same seed gives the same metric
    completed = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(completed, key=lambda t: t["value"])
    best_config = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best_config["optimizer"]["init_args"]["lr"] == pytest.approx(best["params"]["optimizer.init_args.lr"])
    assert "best trial" in capsys.readouterr().out
    # in the sweep's own trainer.default_root_dir, not a second version inside the trial's folder
    assert best_config["trainer"]["default_root_dir"] == "runs/recognition2d"
    main(["fit", "--config", str(out / "best_config.yaml"), "--debug"])
    assert not (out / f"trial_{best['number']}" / "version_1").exists()
    again = tmp_path / "runs" / "recognition2d" / "version_0" / "evaluation" / "metrics.json"
    first = out / f"trial_{best['number']}" / "version_0" / "evaluation" / "metrics.json"
    assert json.loads(again.read_text())["test/acc"] == json.loads(first.read_text())["test/acc"]
    assert json.loads(first.read_text())["test/acc"] == best["test"]["test/acc"]


def test_a_sweep_whose_trials_all_score_the_same_still_writes_its_results(tmp_path, image_folder, monkeypatch):
    """Tied scores leave parameter importance undefined (fANOVA finds no variance to share out):
    the sweep says so in its table instead of failing before best_config.yaml."""
    script_val_acc(monkeypatch, {0: 0.25})  # every trial's val/acc
    space = {"optimizer.init_args.lr": SPACE["optimizer.init_args.lr"], "data.batch_size": {"choices": [4, 8]}}
    out = tmp_path / "out"
    sweep("--space", write_space(tmp_path, space), "--trials", "2", "--storage", f"sqlite:///{tmp_path / 's.db'}",
          "--out", str(out), *fixed(tmp_path, image_folder), "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")  # fmt: skip
    trials = json.loads((out / "trials.json").read_text())
    assert [(t["state"], t["value"]) for t in trials] == [("COMPLETE", 0.25)] * 2
    assert len({json.dumps(t["params"]) for t in trials}) == 2  # the parameters differ, the scores do not
    assert "every completed trial scored val/acc 0.25" in (out / "trials.md").read_text()
    assert (out / "history.png").is_file() and not (out / "importance.png").exists()
    assert (out / "best_config.yaml").is_file()


def test_a_bad_space_file_is_one_line_naming_the_key(tmp_path, capsys):
    for space, named in [
        ({"optimizer.init_args.lr": {"low": 0.1}}, "optimizer.init_args.lr"),
        ({"trainer.max_epochs": {"low": 3, "high": 1}}, "trainer.max_epochs"),
        ({"model.init_args.dropout": {"choices": []}}, "model.init_args.dropout"),
        # a class's key is named as the command line takes it (init_args is the same key)
        ({"optimizer.init_args.lrr": {"low": 0.1, "high": 0.2}}, "key optimizer.lrr: did you mean optimizer.lr"),
    ]:
        line = one_line_error(
            capsys, "sweep", "--task", "recognition2d", "--space", write_space(tmp_path, space), "--trials", "1",
            "--out", str(tmp_path / "out"), "--storage", f"sqlite:///{tmp_path / 's.db'}",
        )  # fmt: skip
        assert named in line, line
    assert line.endswith("(cnnsuite fit --help lists the keys)")  # a sweep's keys are fit's
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("# r\u00e9glage\noptimizer.init_args.lr: {low: 0.1, high: 0.2}\n".encode("latin-1"))
    line = one_line_error(capsys, "sweep", "--task", "recognition2d", "--space", str(latin), "--trials", "1",
                          "--out", str(tmp_path / "out"))  # fmt: skip
    assert "latin.yaml: not YAML ('utf-8' codec can't decode byte 0xe9" in line, line
    assert not (tmp_path / "out").exists()


def test_a_sweep_writes_over_no_file_of_the_users_nor_through_a_link(tmp_path, image_folder, capsys):
    """--out named a folder of the user's: its trials.md was replaced without a word, and a
    trials.md linked elsewhere written through."""
    space = write_space(tmp_path, {"optimizer.init_args.lr": {"low": 1e-3, "high": 1e-2}})
    options = ["--space", space, "--trials", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}",
               *fixed(tmp_path, image_folder)]  # fmt: skip
    mine, linked, elsewhere = tmp_path / "mine", tmp_path / "linked", tmp_path / "victim.txt"
    mine.mkdir()
    (mine / "trials.md").write_text("my notes")
    linked.mkdir()
    elsewhere.write_text("kept")
    (linked / "trials.md").symlink_to(elsewhere)
    line = one_line_error(capsys, "sweep", "--task", "recognition2d", *options, "--out", str(mine))
    assert f"--out {mine}: holds files this command did not write (trials.md)" in line
    line = one_line_error(capsys, "sweep", "--task", "recognition2d", *options, "--out", str(linked))
    assert f"{linked / 'trials.md'}: a symbolic link where this command writes its output" in line
    assert (mine / "trials.md").read_text() == "my notes" and elsewhere.read_text() == "kept"


def test_a_killed_sweep_resumes_its_study(tmp_path, image_folder, monkeypatch):
    from cnnsuite.training import sweep as sweeping

    storage = f"sqlite:///{tmp_path / 's.db'}"
    options = ["--space", write_space(tmp_path, {"optimizer.init_args.lr": {"low": 1e-3, "high": 1e-2}}),
               "--storage", storage, "--out", str(tmp_path / "out"), *fixed(tmp_path, image_folder),
               "--trainer.max_epochs", "1"]  # fmt: skip
    sweep("--trials", "1", *options)
    # a new study draws with --seed: another of the same options draws the same first trial
    again = {storage: f"sqlite:///{tmp_path / 'again.db'}", str(tmp_path / "out"): str(tmp_path / "again")}
    sweep("--trials", "1", *[again.get(o, o) for o in options])
    first, repeated = (optuna.load_study(study_name="sweep", storage=s).trials[0] for s in (storage, again[storage]))
    assert first.params == repeated.params
    # a process killed in the middle of a trial: the trial stays RUNNING, its heartbeat stops
    monkeypatch.setattr(sweeping, "GRACE_PERIOD", 1)
    rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=1)
    killed = optuna.load_study(study_name="sweep", storage=rdb).ask()
    rdb.record_heartbeat(killed._trial_id)
    time.sleep(2)
    sweep("--trials", "2", *options)  # two finished trials in the study: one more
    assert states(storage) == ["COMPLETE", "FAIL", "COMPLETE"]
    # the resumed process draws afresh: its sampler started as the first's, it would repeat trial 0
    trials = sorted(optuna.load_study(study_name="sweep", storage=storage).trials, key=lambda t: t.number)
    assert trials[2].params != trials[0].params
    assert (tmp_path / "out" / "trial_2" / "version_0" / "evaluation" / "metrics.json").is_file()
    # joined with other data, its trials would be pruned and ranked against these: refused
    other = make_image_folder(tmp_path / "other", seed=1)
    found = rf"--study sweep: its trials trained another config \(data.init_args.data_dir was '{image_folder}', now "
    with pytest.raises(ConfigError, match=found + rf"'{other}'\); give the options it ran with"):
        sweep("--trials", "3", *[str(other) if o == str(image_folder) else o for o in options])
    assert states(storage) == ["COMPLETE", "FAIL", "COMPLETE"]


def test_fit_with_seeds_trains_once_per_seed_and_reports_mean_and_std(tmp_path, image_folder, capsys):
    root = tmp_path / "runs"
    main(["fit", "--task", "recognition2d", *fixed(tmp_path, image_folder), "--trainer.max_epochs", "1",
          "--trainer.default_root_dir", str(root), "--seeds", "0,1", "--debug"])  # fmt: skip
    report = json.loads((root / "seeds.json").read_text())
    assert [r["seed"] for r in report["runs"]] == [0, 1]
    runs = [root / "version_0", root / "version_1"]
    assert [r["run"] for r in report["runs"]] == [str(r) for r in runs]
    for run, seed in zip(runs, (0, 1), strict=True):
        assert yaml.safe_load((run / "config.yaml").read_text())["seed_everything"] == seed
    values = [r["test/acc"] for r in report["runs"]]
    assert report["test/acc"]["mean"] == pytest.approx(sum(values) / 2)
    assert report["test/acc"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert "test/acc" in capsys.readouterr().out.splitlines()[-1]
    # seeds tried again in the same folder: a summary of their own, the first kept
    main(["fit", "--task", "recognition2d", *fixed(tmp_path, image_folder), "--trainer.max_epochs", "1",
          "--trainer.default_root_dir", str(root), "--seeds", "2,3", "--debug"])  # fmt: skip
    assert json.loads((root / "seeds.json").read_text()) == report
    again = json.loads((root / "seeds-2.json").read_text())
    assert [r["seed"] for r in again["runs"]] == [2, 3] and again["runs"][0]["run"] == str(root / "version_2")
    assert "seeds-2.json" in capsys.readouterr().out.splitlines()[-1]


def test_seeds_need_two_or_more_whole_numbers_and_no_checkpoint_to_resume(capsys):
    line = one_line_error(capsys, "fit", "--task", "recognition2d", "--seeds", "0,x")
    assert "--seeds" in line
    # one seed has no spread, the same seed twice trains one run twice; validate and test train nothing
    for command, seeds in (("fit", "3"), ("fit", "0,0"), ("validate", "0,1")):
        line = one_line_error(capsys, command, "--task", "recognition2d", "--seeds", seeds)
        assert (
            line == f"cnnsuite {command}: error: --seeds '{seeds}': expected two or more different whole numbers, "
            "0,1,2 (fit only)"
        )
    # every seed resumed the one run named, and the summary averaged it with itself (± 0)
    for resume in (["--ckpt_path", "last"], ["--ckpt_path=last"]):
        line = one_line_error(capsys, "fit", "--task", "recognition2d", "--seeds", "0,1", *resume)
        assert line.endswith("--seeds with --ckpt_path: each seed trains a run of its own from the start; resume a "
                             "seed's run with --ckpt_path alone")  # fmt: skip


@pytest.mark.slow
def test_two_processes_on_one_storage_run_one_study_without_duplicating_trials(tmp_path, image_folder):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    command = [sys.executable, "-m", "cnnsuite", "sweep", "--task", "recognition2d", "--trials", "6",
               "--space", write_space(tmp_path), "--storage", storage, "--out", str(tmp_path / "out"),
               *fixed(tmp_path, image_folder)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    workers = [
        subprocess.Popen([*command, "--seed", str(i)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    for worker in workers:
        assert worker.wait(timeout=600) == 0, worker.stderr.read()
    study = optuna.load_study(study_name="sweep", storage=storage)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(len(numbers))) and len(numbers) >= 6
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2, "one process ran every trial"
    for n in numbers:  # each trial ran once: one run folder
        assert [p.name for p in (tmp_path / "out" / f"trial_{n}").iterdir()] == ["version_0"]


@pytest.mark.parametrize(("given", "warmup"), [([], 2), (["--warmup_epochs", "0"], 0)])
def test_the_pruner_waits_a_third_of_the_epochs_unless_told(tmp_path, image_folder, monkeypatch, given, warmup):
    """A trial's first epochs are the noise of its start: by default the pruner judges none of
    the first third of them."""
    made = []

    def create_study(**kwargs):
        made.append(kwargs["pruner"])
        raise KeyboardInterrupt  # stop before any trial

    monkeypatch.setattr(optuna, "create_study", create_study)
    with pytest.raises(KeyboardInterrupt):
        space = write_space(tmp_path, {"optimizer.init_args.lr": SPACE["optimizer.init_args.lr"]})
        sweep("--space", space, "--trials", "2", *given, *fixed(tmp_path, image_folder), "--trainer.max_epochs", "6")
    assert made[0]._n_warmup_steps == warmup


def test_a_negative_warmup_is_one_line(tmp_path, image_folder, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--task", "recognition2d", "--space", write_space(tmp_path), "--trials", "2",
              "--warmup_epochs", "-1", *fixed(tmp_path, image_folder)])  # fmt: skip
    assert capsys.readouterr().err.strip().endswith("--warmup_epochs -1: expected 0 or more")


def test_the_best_trial_is_read_only_from_this_sweeps_folder(tmp_path, capsys):
    """A study's database is shared by every worker and may be anyone's: the run folder it names
    for the best trial (``/etc``, another machine's) is not copied into ``best_config.yaml``."""
    from cnnsuite.training.sweep import write_results

    secret = tmp_path / "elsewhere" / "config.yaml"
    secret.parent.mkdir()
    secret.write_text("password: hunter2\n")
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("monitor", "val/acc")
    for value in (0.5, 0.9):
        study.add_trial(optuna.trial.create_trial(
            params={"x": value}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, value=value,
            user_attrs={"run": str(secret.parent), "test": {"test/acc": value}},
        ))  # fmt: skip
    out = tmp_path / "sweep"
    out.mkdir()
    write_results(study, out, "runs/x")
    assert not (out / "best_config.yaml").exists()
    assert f"its run, {secret.parent}, is another worker's" in capsys.readouterr().out


def test_seeds_refuse_one_checkpoint_folder_for_every_run_before_the_first_trains(tmp_path, image_folder, capsys):
    """Each seed's run writes best.ckpt: into one checkpoint.dirpath, the second seed's would replace
    the first's (refused only once the first had trained); each run keeps its own checkpoints/."""
    shared = tmp_path / "shared"
    line = one_line_error(capsys, "fit", "--task", "recognition2d", *fixed(tmp_path, image_folder),
                          "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
                          "--checkpoint.dirpath", str(shared), "--seeds", "0,1")  # fmt: skip
    assert line.endswith(f"checkpoint.dirpath {shared}: --seeds trains several runs, whose best.ckpt would replace "
                         "each other's there; leave it out (each run's own checkpoints/)")  # fmt: skip
    assert not shared.exists() and not (tmp_path / "runs").exists()
    # a sweep's trials the same
    line = one_line_error(capsys, "sweep", "--task", "recognition2d", "--space", write_space(tmp_path), "--trials", "2",
                          "--out", str(tmp_path / "out"), "--storage", f"sqlite:///{tmp_path / 's.db'}",
                          *fixed(tmp_path, image_folder), "--checkpoint.dirpath", str(shared))  # fmt: skip
    assert line.endswith(f"checkpoint.dirpath {shared}: cnnsuite sweep trains several runs, whose best.ckpt would "
                         "replace each other's there; leave it out (each run's own checkpoints/)")  # fmt: skip
    assert not shared.exists()


def test_a_sweep_of_a_task_takes_configs_that_merge_over_its_own(tmp_path, monkeypatch):
    """``make sweep TASK=... ARGS="--config mine.yaml"`` passes both, as ``cnnsuite fit --task``
    takes them: the task's config first, the user's merged over it (argparse refused the pair)."""
    import cnnsuite.training.sweep as sweep_module

    ran = []
    monkeypatch.setattr(sweep_module, "run_sweep", lambda argv, space, args: ran.append(argv))
    mine = tmp_path / "mine.yaml"
    mine.write_text("trainer:\n  max_epochs: 1\n")
    space = write_space(tmp_path)
    main(["sweep", "--task", "recognition2d", "--config", str(mine), "--space", space, "--trials", "1"])
    assert ran[-1] == ["--task", "recognition2d", "--config", str(mine)]
    main(["sweep", "--config", str(mine), "--space", space, "--trials", "1", "--trainer.max_epochs", "2"])
    assert ran[-1] == ["--config", str(mine), "--trainer.max_epochs", "2"]
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--space", space, "--trials", "1"])
    assert exit_info.value.code == 2


def test_the_trial_table_is_strict_json_where_a_trials_test_metric_is_undefined(tmp_path):
    """An AUROC undefined on a test split (one class present) is NaN: trials.json says null."""
    from cnnsuite.training.sweep import write_table

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("monitor", "val/acc")
    key = "optimizer.init_args.lr"
    study.add_trial(optuna.trial.create_trial(
        params={key: 0.005}, distributions={key: optuna.distributions.FloatDistribution(1e-3, 1e-2)}, value=0.5,
        user_attrs={"test": {"test/auroc": float("nan")}},
    ))  # fmt: skip
    write_table(study, tmp_path)
    text = (tmp_path / "trials.json").read_text()
    rows = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in trials.json"))
    assert rows[0]["test"] == {"test/auroc": None} and rows[0]["value"] == 0.5


def test_the_study_direction_follows_the_monitored_keys_mode(tmp_path, image_folder):
    """A sweep on ``val/loss`` minimises it: it joins a minimising study of that name, where a
    sweep on ``val/acc`` (maximised) is refused, without a trial to train (the study is full)."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    key = "optimizer.init_args.lr"
    study = optuna.create_study(study_name="sweep", storage=storage, direction="minimize")
    study.add_trial(optuna.trial.create_trial(
        params={key: 0.005}, distributions={key: optuna.distributions.FloatDistribution(1e-3, 1e-2)}, value=0.5,
    ))  # fmt: skip
    space = write_space(tmp_path, {key: {"low": 1e-3, "high": 1e-2}})
    args = ("--space", space, "--trials", "1", "--storage", storage, "--out", str(tmp_path / "out"))
    sweep(*args, *fixed(tmp_path, image_folder), "--checkpoint.monitor", "val/loss")
    assert (tmp_path / "out" / "trials.md").read_text().startswith("# Study sweep: minimize val/loss")
    with pytest.raises(ConfigError, match=r"the stored study minimizes, this task's val/acc is to maximize"):
        sweep(*args, *fixed(tmp_path, image_folder))


def test_each_key_is_drawn_from_its_own_distribution(tmp_path):
    """A log range is drawn on a log scale, whole-number bounds as integers, choices as given (a
    list as the text the command line takes)."""
    from cnnsuite.training.sweep import read_space, suggest

    space = read_space(write_space(tmp_path))
    trial = optuna.create_study().ask()
    values = {key: suggest(trial, key, distribution) for key, distribution in space.items()}
    assert trial.distributions == space
    assert space["optimizer.init_args.lr"].log and isinstance(values["trainer.max_epochs"], int)
    assert values["model.init_args.backbone_kwargs.channels"] in ("[4, 8, 16, 32]", "[8, 8, 16, 16]")


def test_a_trial_enqueued_in_a_shared_study_neither_escapes_the_sweeps_folder_nor_leaves_the_space(
    tmp_path, monkeypatch
):
    """Another process of a shared study (or a hand-made database) may enqueue a trial: Optuna
    hands it to the next process that asks, with its stored number, which SQLite keeps as text
    (``../../x``, a run folder outside the sweep's), and its fixed values, taken even outside the
    range with a warning only. Neither reaches a trial's command line."""
    import sqlite3

    from optuna.distributions import FloatDistribution

    import cnnsuite.cli
    from cnnsuite.errors import ConfigError
    from cnnsuite.training.sweep import objective

    ran = []
    monkeypatch.setattr(cnnsuite.cli, "fit_run", lambda options, *args, **kwargs: ran.append(options))
    key = "model.init_args.lr"
    space = {key: FloatDistribution(1e-4, 1e-1, log=True)}

    def enqueued(name: str, lr: float, number: str | None = None):
        """The trial that a sweep asking a study another made would get."""
        url = f"sqlite:///{tmp_path / name}"
        optuna.create_study(study_name="sweep", storage=url, direction="maximize").enqueue_trial({key: lr})
        if number is not None:
            with sqlite3.connect(tmp_path / name) as connection:
                connection.execute("UPDATE trials SET number = ? WHERE state = 'WAITING'", (number,))
        return optuna.load_study(study_name="sweep", storage=url).ask()

    with pytest.raises(ConfigError, match=r"trial number '\.\./\.\./escaped', .*expected a whole number"):
        objective(enqueued("escape.db", 0.01, "../../escaped"), [], space, tmp_path / "out")
    trial = enqueued("range.db", 1e9)
    outside = r"lr 1000000000\.0, enqueued in the study; expected a value of the space"
    with pytest.warns(UserWarning, match="out of range"), pytest.raises(ConfigError, match=outside):
        objective(trial, [], space, tmp_path / "out")
    assert ran == []


def test_a_shared_studys_names_and_values_reach_the_table_and_terminal_escaped(tmp_path, capsys):
    """The study's database may be anyone's (``--storage``): its study name, monitor, choices,
    test-metric names and run folder go into trials.md and onto the terminal. A terminal code
    there is shown escaped, not obeyed, and a '|' or a newline stays inside its cell."""
    from cnnsuite.training.sweep import write_results

    hostile = "a|b\n\x1b]0;pwned\x07\x1b[2J"
    study = optuna.create_study(study_name=f"s{hostile}", direction="maximize")
    study.set_user_attr("monitor", f"val/acc{hostile}")
    study.add_trial(optuna.trial.create_trial(
        params={f"k{hostile}": f"c{hostile}"}, value=0.5,
        distributions={f"k{hostile}": optuna.distributions.CategoricalDistribution([f"c{hostile}"])},
        user_attrs={"run": f"r{hostile}", "test": {f"test/acc{hostile}": 0.5}, "worker": f"w{hostile}"},
    ))  # fmt: skip
    out = tmp_path / "sweep"
    out.mkdir()
    write_results(study, out)
    table = (out / "trials.md").read_text()
    printed = capsys.readouterr().out
    for text in (table, printed):
        assert not any(c in text for c in "\x1b\x07"), text
        assert "a\\|b\\n\\x1b]0;pwned\\x07\\x1b[2J" in text
    header, rule, row = table.splitlines()[2:5]
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in (header, rule, row)]
    assert cells == [cells[0]] * 3 and cells[0] == 8  # trial, state, monitor, test, key, seconds
