"""``cnnsuite sweep``: a hyper-parameter search with Optuna over any config key.

Each trial is a normal ``cnnsuite fit`` run in this process (:func:`cnnsuite.cli.fit_run`) with
the trial's values as command-line options, in its own folder ``<out>/trial_<n>/version_0``
with checkpoints and evaluation. The value a trial is scored by is the one that picks its best
checkpoint (the task's monitor and direction, as the run resolves them); Optuna's TPE sampler
proposes values and a median pruner stops a trial whose validation curve falls behind, fed by
optuna-integration's Lightning callback.

The study lives in a database (an SQLite file beside the results by default, any SQLAlchemy URL
with ``--storage``): a killed sweep resumes it (``--trials N`` counts the study's finished
trials; a trial whose process died stops sending heartbeats and is marked failed), and several
processes or machines on one database share one study.

Optuna and the stack are imported inside the functions: ``cnnsuite sweep --help`` is immediate.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from ..data.textfiles import parse_yaml
from ..errors import ConfigError, MissingFileError, printable
from .runs import output_folder

#: seconds between a running trial's heartbeats, and the silence after which it is stale: the
#: trial of a killed process, marked failed when a sweep next starts a trial
HEARTBEAT_INTERVAL = 30
GRACE_PERIOD = 120
#: trials that count towards ``--trials``
FINISHED = ("COMPLETE", "PRUNED")
SPACE_FORMS = "{low: A, high: B} (log: true for a log scale; whole-number bounds draw integers) or {choices: [...]}"


def sweep_main(argv: list[str]) -> None:
    from ..commands import add_out, command_parser

    parser = command_parser(
        "sweep", ckpt=None,
        description="Search hyper-parameters with Optuna: each trial a cnnsuite fit run with values drawn from "
        "the space file (TPE sampler, median pruning on the task's monitored metric), the study kept in a "
        "database, so that a killed sweep resumes and several processes share one study. Writes trials.md, "
        "trials.json, history.png, importance.png and best_config.yaml (the best trial's config, for "
        "cnnsuite fit --config).",
        epilog="Any other --KEY VALUE (a config key: --trainer.max_epochs 3, --data.data_dir DIR) applies to every "
        "trial. The space file maps dotted config keys to " + SPACE_FORMS + ".",
    )  # fmt: skip
    parser.add_argument("--task", help="the task whose packaged config is swept (configs given merge over it)")
    parser.add_argument("--config", action="append", default=[], help="a config to sweep (several merge in order)")
    parser.add_argument("--space", required=True, help="YAML file: dotted config key -> range or choices")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    parser.add_argument("--study", default="sweep", help="the study's name in the storage (default: sweep)")
    parser.add_argument(
        "--storage", default=None,
        help="SQLAlchemy URL of the study's database, shared by every process of the study (default: "
        "sqlite:///<trainer.default_root_dir>/sweeps/<study>.db)",
    )  # fmt: skip
    add_out(parser, "results and trial runs (default: <trainer.default_root_dir>/sweeps/<study>)")
    parser.add_argument("--timeout", type=float, default=None, help="start no trial after this many seconds")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="the sampler's seed, drawn with the trials already in the study (give each process its own)",
    )  # fmt: skip
    parser.add_argument(
        "--startup_trials", type=int, default=2,
        help="finished trials before the pruner compares curves (default: 2)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup_epochs", type=int, default=None,
        help="epochs of a trial before the pruner may stop it (default: a third of trainer.max_epochs)",
    )  # fmt: skip
    args, fixed = parser.parse_known_args(argv)
    if args.task is None and not args.config:
        parser.error("one of the arguments --task --config is required")
    if args.trials < 1:
        parser.error(f"--trials {args.trials}: expected 1 or more")
    base = (["--task", args.task] if args.task else []) + [a for c in args.config for a in ("--config", c)]
    run_sweep(base + fixed, read_space(args.space), args)


def read_space(path: str | os.PathLike) -> dict:
    """The space file as ``{key: optuna distribution}``; a malformed entry is an error naming its key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--space {path}: no such file")
    try:
        space = parse_yaml(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not YAML ({' '.join(str(err).split())})") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: expected a mapping of dotted config keys to {SPACE_FORMS}")
    out = {}
    for key, spec in space.items():
        where = f"{path}: {key}"
        if isinstance(spec, dict) and set(spec) == {"choices"}:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: choices must be a non-empty list")
            # Optuna stores scalar choices; a list or mapping goes in as the text the command line takes
            out[key] = CategoricalDistribution([c if is_scalar(c) else json.dumps(c) for c in choices])
            continue
        if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log"}:
            raise ConfigError(f"{where}: expected {SPACE_FORMS}, got {spec!r}")
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
            raise ConfigError(f"{where}: expected numbers low <= high, got low={low!r}, high={high!r}")
        if not isinstance(log, bool) or (log and low <= 0):
            raise ConfigError(f"{where}: log must be true or false, and a log scale needs low > 0")
        whole = isinstance(low, int) and isinstance(high, int)
        out[key] = IntDistribution(low, high, log=log) if whole else FloatDistribution(low, high, log=log)
    return out


def is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def option_text(value: object) -> str:
    """A drawn value as the command line gives it to the config parser."""
    return value if isinstance(value, str) else json.dumps(value)


def overrides(params: dict) -> list[str]:
    return [a for key, value in params.items() for a in (f"--{key}", option_text(value))]


def probe(argv: list[str], space: dict):
    """Build (not fit) the run of ``argv`` with the first value of every key of ``space``, as a
    trial would: a key the config does not take, or a value it refuses, fails here before any
    trial starts. Returns the built CLI: its trainer's checkpoint callback holds the task's
    monitor and direction as a run resolves them, its config what every trial shares."""
    from ..cli import ARGS_AND_ARGV, CnnSuiteCLI, task_config_args

    first = {k: d.choices[0] if hasattr(d, "choices") else d.low for k, d in space.items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARGS_AND_ARGV)
        return CnnSuiteCLI(args=[*task_config_args(argv), *overrides(first), "--trainer.logger", "false"], run=False)


def shared_config(config, space: dict) -> dict[str, object]:
    """What every trial of a study trains with: the run's config, flattened to dotted keys, less
    the keys the space draws (and the probe's own ``trainer.logger``). A study joined with
    another (other data, another monitor) would prune and rank trials of two experiments
    against each other."""
    drawn = {k.replace(".init_args", "") for k in (*space, "trainer.logger")}

    def flat(value, prefix: str = "") -> dict[str, object]:
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {} if prefix[:-1].replace(".init_args", "") in drawn else {prefix[:-1]: value}

    return json.loads(json.dumps(flat(config.as_dict()), default=str))


def check_same_experiment(study, shared: dict[str, object], name: str) -> None:
    """A study joined again must be given what its trials were (:func:`shared_config`)."""
    stored = study.user_attrs.get("config")
    if stored is None:  # a new study, or one a sweep of before this record made
        study.set_user_attr("config", shared)
        return
    differ = sorted(k for k in stored.keys() | shared.keys() if stored.get(k) != shared.get(k))
    if differ:
        shown = ", ".join(f"{k} was {stored.get(k)!r}, now {shared.get(k)!r}" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise ConfigError(
            f"--study {name}: its trials trained another config ({shown}{more}); give the options it ran with, or "
            "name another study"
        )


def warmup_epochs(given: int | None, max_epochs: int | None) -> int:
    """The epochs a trial trains before the pruner may stop it: ``given``, else a third of the
    run's. A task whose first epochs all score low (a localizer's class head reads boxes that
    are still wild) would otherwise be judged on the noise of its start, and good settings
    pruned after one epoch."""
    if given is not None:
        if given < 0:
            raise ConfigError(f"--warmup_epochs {given}: expected 0 or more")
        return given
    return max(max_epochs or 0, 0) // 3


def run_sweep(argv: list[str], space: dict, args) -> None:
    """Create or join the study and run trials until it holds ``args.trials`` finished ones, then
    write the results."""
    import optuna

    cli = probe(argv, space)
    trainer = cli.trainer
    checkpoint = trainer.checkpoint_callback
    sweeps = Path(trainer.default_root_dir) / "sweeps"
    out = Path(args.out) if args.out else sweeps / args.study
    url = args.storage
    if url is None:
        sweeps.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{sweeps / args.study}.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, matplotlib plots
    storage = open_storage(url)
    direction = "maximize" if checkpoint.mode == "max" else "minimize"
    study = optuna.create_study(
        study_name=args.study, storage=storage, direction=direction, load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=args.startup_trials, n_warmup_steps=warmup_epochs(args.warmup_epochs, trainer.max_epochs)
        ),
    )  # fmt: skip
    # A new study draws with --seed; a process resuming it (or joining it with the same --seed)
    # with --seed and the trials already there: seeded as the first process was, it would draw
    # its points again.
    seed = args.seed
    if study.trials:
        seed = int(np.random.SeedSequence([args.seed, len(study.trials)]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"--study {args.study}: the stored study {study.direction.name.lower()}s, this task's "
                          f"{checkpoint.monitor} is to {direction}: name another study")  # fmt: skip
    check_same_experiment(study, shared_config(cli.config, space), args.study)
    study.set_user_attr("monitor", checkpoint.monitor)
    output_folder(out, given=args.out is not None, marker="trials.json")
    write_table(study, out)  # its marker from the start: a sweep killed in its first trial resumes into it
    print(f"study {args.study} in {url}: {direction} {checkpoint.monitor}; results in {out}/")
    remaining = args.trials - len(finished(study))
    if remaining > 0:
        study.optimize(
            lambda trial: objective(trial, argv, space, out), n_trials=remaining, timeout=args.timeout,
            callbacks=[optuna.study.MaxTrialsCallback(args.trials, states=finished_states()),
                       lambda study, trial: write_table(study, out)],
            catch=(FloatingPointError,),  # a diverged trial (DivergedError) is a failed one; the sweep goes on
        )  # fmt: skip
    write_results(study, out, trainer.default_root_dir)


def open_storage(url: str):
    """The study's database, with heartbeats. Processes that start together on a new database
    race to create its tables and to stamp its schema version: a loser (a table that exists
    already, a version row written already) finds them made on a later try."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    attempts = 5
    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD)
        except (OperationalError, IntegrityError) as err:
            if attempt == attempts:
                raise ConfigError(f"--storage {url}: {' '.join(str(err).split())}") from None
            time.sleep(attempt)
        except Exception as err:  # SQLAlchemy's errors for a bad URL or a missing driver vary by driver
            raise ConfigError(f"--storage {url}: {' '.join(str(err).split())}") from None


def finished_states():
    from optuna.trial import TrialState

    return tuple(TrialState[s] for s in FINISHED)


def finished(study) -> list:
    return study.get_trials(deepcopy=False, states=finished_states())


def suggest(trial, key: str, distribution):
    """The trial's value for ``key`` from its range or choices. A trial enqueued in the study by
    another process comes with fixed values, which Optuna takes outside the range with only a
    warning (and as any text ``float`` reads): such a value is an error naming it, never a run's
    option. Fixed choices are one of the space's, or Optuna refuses them."""
    if hasattr(distribution, "choices"):
        return trial.suggest_categorical(key, distribution.choices)
    whole = isinstance(distribution.low, int)
    suggest_number = trial.suggest_int if whole else trial.suggest_float
    value = suggest_number(key, distribution.low, distribution.high, log=distribution.log)
    kinds = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not distribution.low <= value <= distribution.high:
        raise ConfigError(
            f"trial {trial.number}: {key} {value!r}, enqueued in the study; expected a value of the space, "
            f"{distribution.low} to {distribution.high}"
        )
    return value


def objective(trial, argv: list[str], space: dict, out: Path) -> float:
    """One trial: a fit with the trial's values, in ``<out>/trial_<n>``; its score is the value
    of its best checkpoint. A pruned trial ends in :class:`optuna.TrialPruned`, which reaches
    Optuna as it is."""
    from ..cli import fit_run
    from .pruning import TrialPruning

    # the number of a trial another process enqueued is the database's, text where SQLite holds text
    if isinstance(trial.number, bool) or not isinstance(trial.number, int) or trial.number < 0:
        raise ConfigError(f"trial number {trial.number!r}, stored in the study; expected a whole number (its folder's)")
    params = {key: suggest(trial, key, distribution) for key, distribution in space.items()}
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    root = out / f"trial_{trial.number}"
    # trials compare settings in one recipe: as configured, unless the sweep's own options say --recipe auto
    options = ["--recipe", "configured", *argv, *overrides(params), "--trainer.default_root_dir", str(root)]
    result = fit_run(options, [TrialPruning(trial)], shared_by="cnnsuite sweep")
    run = result.pop("run")
    (monitor, value), (test_key, test) = result.items()
    trial.set_user_attr("test", {test_key: test})
    if value is None:
        raise ConfigError(f"trial {trial.number} ({run}): no {monitor} was logged, nothing to compare")
    return value


def trial_rows(study) -> list[dict]:
    """Every trial of the study, as ``trials.json`` holds it."""
    return [
        {
            "number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "duration": t.duration.total_seconds() if t.duration else None,
            "test": t.user_attrs.get("test"), "run": t.user_attrs.get("run"), "worker": t.user_attrs.get("worker"),
        }
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    ]  # fmt: skip


def write_table(study, out: Path, note: str = "") -> None:
    """``trials.json`` (strict JSON) and ``trials.md``: every trial's values, score, test metric,
    state and time. The names and values come from the study's database, which another process
    or person may have written: each is shown escaped (:func:`cell`)."""
    from ..jsonout import strict_json

    rows = trial_rows(study)
    (out / "trials.json").write_text(strict_json(rows, indent=2) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    tests = list(dict.fromkeys(k for r in rows for k in (r["test"] or {})))
    monitor = study.user_attrs.get("monitor", "value")

    lines = [
        f"# Study {cell(study.study_name)}: {study.direction.name.lower()} {cell(monitor)}",
        "",
        "| trial | state | " + " | ".join(map(cell, [monitor, *tests, *keys])) + " | seconds |",
        "|---" * (4 + len(tests) + len(keys)) + "|",
    ]
    for r in rows:
        values = [r["value"], *((r["test"] or {}).get(k) for k in tests), *(r["params"].get(k) for k in keys)]
        duration = f"{r['duration']:.0f}" if r["duration"] is not None else ""
        lines.append(f"| {cell(r['number'])} | {r['state']} | " + " | ".join(map(cell, values)) + f" | {duration} |")
    (out / "trials.md").write_text("\n".join(lines) + "\n" + (f"\n{note}\n" if note else ""))


def shown(value) -> str:
    """A name or value the study's database holds, as one line to print: a terminal code in it
    shown escaped, not obeyed (the database may be anyone's, with ``--storage``)."""
    return printable(str(value), keep="")


def cell(value) -> str:
    """A value of the study as a cell of ``trials.md``: :func:`shown`, its ``|`` kept in the cell."""
    return shown("" if value is None else f"{value:.4g}" if isinstance(value, float) else value).replace("|", "\\|")


def importance_gap(complete: list, monitor: str) -> str:
    """Why the completed trials cannot rank their parameters, or ``""`` when they can.
    fANOVA shares the variance of the scores out among the parameters: with fewer than two
    trials, parameters that took one value, or scores that all tie (short trials that all reach
    the same accuracy) there is none to share, and Optuna raises rather than plot."""
    if len(complete) < 2:
        return "No importance.png: it needs two or more completed trials."
    keys = {k for t in complete for k in t.params}
    if not any(len({json.dumps(t.params.get(k)) for t in complete}) > 1 for k in keys):
        return "No importance.png: every completed trial took the same values, so no parameter explains a difference."
    scores = {t.value for t in complete}
    if len(scores) == 1:
        return (f"No importance.png: every completed trial scored {monitor} {scores.pop():.4g}, so no parameter "
                "explains a difference.")  # fmt: skip
    return ""


def write_results(study, out: Path, root_dir: str | None = None) -> None:
    """The table, Optuna's history and importance plots, and ``best_config.yaml``: the best
    trial's own ``config.yaml`` with the sweep's ``trainer.default_root_dir`` (``root_dir``; the
    trial's would train again inside the trial's folder), which ``cnnsuite fit --config`` takes
    as it is. The trial's folder is the one the study's database names, which is shared by every
    worker and may name anything: only a folder of this sweep's ``out`` is read."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {"history.png": lambda: optuna.visualization.matplotlib.plot_optimization_history(study)}
    note = importance_gap(complete, study.user_attrs.get("monitor", "value"))
    if not note:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        plots["importance.png"] = lambda: optuna.visualization.matplotlib.plot_param_importances(
            study, evaluator=evaluator
        )
    for name, plot in plots.items():
        axes = plot()
        axes.figure.tight_layout()
        axes.figure.savefig(out / name, dpi=110)
        plt.close(axes.figure)
    write_table(study, out, note)
    if not complete:
        print(f"no completed trial yet: {out}/trials.md")
        return
    best = study.best_trial
    run = Path(str(best.user_attrs.get("run", ""))).resolve()
    print((out / "trials.md").read_text())
    if out.resolve() not in run.parents or not (run / "config.yaml").is_file():
        print(
            f"best trial {shown(best.number)}: {best.params}; its run, {shown(run)}, is another worker's "
            "(no best_config.yaml)"
        )
        return
    config = yaml.safe_load((run / "config.yaml").read_text())
    if root_dir is not None and isinstance(config.get("trainer"), dict):
        config["trainer"]["default_root_dir"] = root_dir
    (out / "best_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"best trial {shown(best.number)}: {shown(study.user_attrs.get('monitor', 'value'))} {best.value:.4f} "
          f"({best.params}); cnnsuite fit --config {out / 'best_config.yaml'} trains it again")  # fmt: skip
