"""The ``cnnsuite`` command: one command table (:mod:`cnnsuite.commands`) — LightningCLI's
``fit``/``validate``/``test``, and ``evaluate``, ``predict``, ``export``, ``inspect``, ``serve``,
``bench`` on a checkpoint (``cnnsuite --help`` lists them, ``cnnsuite <command> --help`` is each
one's own help).

    cnnsuite fit --config tasks/<task>/config.yaml --data.data_dir ~/my_images
    cnnsuite evaluate --ckpt runs/<task>/version_0/checkpoints/best.ckpt [more.ckpt ...]
    cnnsuite predict --ckpt .../best.ckpt --input photos/ [--out DIR]

Model and data are chosen in the config by class path (subclass mode); the model's
arguments that follow the data (``num_classes``, ``in_channels``, ``class_names`` and the rest
of :data:`cnnsuite.contract.LINKED`) are linked from the datamodule. Every
run writes under ``trainer.default_root_dir``: ``version_N/`` with the config, TensorBoard
events, ``metrics.csv``, ``splits.json``, ``checkpoints/{best,last}.ckpt`` and, after fit,
``evaluation/``. LightningCLI's own ``predict`` is not a command (``cnnsuite predict`` is the
file predictor).

A mistake a user can make (a bad file, a missing folder, an impossible value, a mistyped or
abbreviated key) ends the command with one line, ``cnnsuite <command>: error: ...``, and exit
status 2; ``--debug`` (or ``CNNSUITE_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import logging
import os
import re
import statistics
import sys
import traceback
import warnings
from pathlib import Path
from typing import Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .commands import (
    COMMANDS,
    LIGHTNING_COMMANDS,
    help_requested,
    print_table,
    task_configs,
    unknown_command,
)
from .contract import LINKED, check_config_classes, on_test_split, registered_tasks, task_named
from .data import TaskDataModule
from .data.folders import expand_home
from .data.shards import is_url
from .data.textfiles import NestedTooDeeply, parse_yaml
from .errors import ConfigError, UserError, describe_unknown, printable
from .jsonout import shown_metric, strict_json
from .training import recipe
from .training.callbacks import CompactModelSummary
from .training.fits import check_model_fits_data
from .training.runs import (
    AtomicCheckpointIO,
    BestCheckpoint,
    LastCheckpoint,
    RunConfig,
    default_loggers,
    newest_last_checkpoint,
    run_version,
)
from .training.task import TaskModule
from .trust.checkpoint import Resumed, check_matches, check_rebuildable, load_checkpoint, resume_arguments

#: LightningCLI's warning when it is given ``args`` while the process has a command line of its
#: own: from Python (``main([...])``, a sweep's trials), that command line is the caller's
ARGS_AND_ARGV = "LightningCLI's args parameter is intended"
#: what a user can cause: a :class:`~cnnsuite.errors.UserError` (a bad config value or file, a
#: missing folder, a diverging run), an argument argparse refuses, Lightning refusing a
#: combination of settings (a checkpoint monitor the model never logs, trainer flags that
#: exclude each other) and the file system saying no (a folder that cannot be written, a full
#: disk). Shown as one line; any other exception is a bug and keeps its traceback.
USER_ERRORS = (UserError, OSError, argparse.ArgumentError, MisconfigurationException)


class CnnSuiteParser(LightningArgumentParser):
    """LightningCLI's parser; a config it prints (``--print_config``) or saves (``config.yaml``)
    shows the checkpoint's monitor and mode as the run will use them (:func:`resolve_monitor`),
    and, printed for a run resumed from ``--ckpt_path``, the model and data settings it takes from
    the checkpoint (:func:`resumed_settings`): ``--print_config`` prints before the CLI resumes."""

    #: set once the CLI has taken a resumed checkpoint's settings into the config it dumps
    resumed_taken = False

    def dump(self, cfg, *args, **kwargs):
        if cfg.get("model.class_path") and cfg.get("ckpt_path") and not self.resumed_taken:
            cfg = cfg.clone()
            if ckpt_path := resolve_last(cfg):
                cfg = self.parse_object(resumed_settings(cfg, ckpt_path)[2], cfg)
        if cfg.get("checkpoint") is not None and cfg.get("model.class_path"):
            cfg = cfg.clone()
            resolve_monitor(cfg)
        return super().dump(cfg, *args, **kwargs)


def resolve_monitor(config) -> None:
    """The best checkpoint is the best by the task's own measure unless the config says
    otherwise: ``checkpoint.monitor`` null takes the model class's ``monitor``, and its ``mode``
    unless ``checkpoint.mode`` is given;
    a monitor without ``checkpoint.mode`` takes the direction the task knows for that key
    (:meth:`~cnnsuite.training.task.TaskModule.mode_of`, an unknown key is an error naming those logged)."""
    checkpoint = config.checkpoint
    module, _, name = config.model.class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name)  # the user's own config names it
    if checkpoint.monitor is None:
        checkpoint.monitor, checkpoint.mode = model_class.monitor, checkpoint.mode or model_class.mode
        return
    mode = model_class.mode_of(checkpoint.monitor)
    if checkpoint.mode is None:
        checkpoint.mode = mode


def resolve_last(config, say: bool = False) -> str | None:
    """``config``'s ``ckpt_path``, ``last`` made the newest run's ``last.ckpt`` under
    ``default_root_dir`` (None where there is none yet: ``say`` says so)."""
    if config.get("ckpt_path") == "last":
        root = root_dir(config)
        last = newest_last_checkpoint(root)
        if last is None and say:  # a first start (a job that will requeue itself, say) begins afresh
            rank_zero_info(f"--ckpt_path last: no version_N/checkpoints/last.ckpt under {root} yet")
        config.ckpt_path = str(last) if last else None
    return config.get("ckpt_path")


def root_dir(config) -> Path:
    """The folder a run's ``version_N/`` goes in: ``trainer.default_root_dir``, else the working folder."""
    return Path(config.trainer.get("default_root_dir") or os.getcwd())


def check_checkpoint_folders(config, shared_by: str | None = None) -> None:
    """A new run's ``checkpoint.dirpath`` holds no checkpoint already: best.ckpt, a fixed name,
    would replace another run's or a file of the user's. (Left null, it goes to the run's own new
    ``version_N/checkpoints``.) Where the config is ``shared_by`` several runs (``--seeds``, a
    sweep's trials), no dirpath at all: each would replace the one before's, refused only once
    that one had trained."""
    dirpath = config.get("checkpoint.dirpath")
    if dirpath and shared_by:
        raise ConfigError(
            f"checkpoint.dirpath {dirpath}: {shared_by} trains several runs, whose best.ckpt would replace each "
            "other's there; leave it out (each run's own checkpoints/)"
        )
    # the folder as Lightning's ModelCheckpoint takes it: a ~user unknown here is a relative folder's name
    found = sorted(p.name for p in Path(os.path.expanduser(dirpath)).glob("*.ckpt")) if dirpath else []
    if found:
        raise ConfigError(
            f"checkpoint.dirpath {dirpath}: holds {', '.join(found[:3])}{', ...' if len(found) > 3 else ''}, "
            "which this run's checkpoints could replace; name a new or empty folder, or leave it out "
            "(the run folder's checkpoints/), or resume the run they belong to with --ckpt_path"
        )


def resumed_settings(config, ckpt_path: str) -> tuple[Resumed, dict, dict]:
    """``(the checkpoint's checked arguments, the data settings given, the model and data
    sections a run resumed from ckpt_path takes)``: the checkpoint's model, and its data
    settings over the ones given (:func:`~cnnsuite.trust.checkpoint.resume_arguments`)."""
    data = config.get("data")
    given = data.init_args.as_dict() if data is not None and data.get("init_args") is not None else {}
    resumed = resume_arguments(ckpt_path, data.class_path if data is not None else None, given)
    sections = {"model": {"class_path": resumed.model_class, "init_args": resumed.model_args}}
    if data is not None:
        sections["data"] = {"class_path": data.class_path, "init_args": {**given, **resumed.data_args}}
    return resumed, given, sections


def follow_model_monitor(config, model: TaskModule, keep_mode: bool) -> bool:
    """After the model is built, a checkpoint whose monitor the config left to the task takes
    the model's own ``monitor``, and its ``mode`` unless the config gave one (``keep_mode``),
    where they differ from its class's (a multi-label classifier follows ``val/map_macro``);
    True when they did. The config then shows them as the run uses them (``config.yaml``)."""
    checkpoint = config.checkpoint
    mode = checkpoint.mode if keep_mode else model.mode
    if (checkpoint.monitor, checkpoint.mode) == (model.monitor, mode):
        return False
    checkpoint.monitor, checkpoint.mode = model.monitor, mode
    return True


def absolute_data_paths(config) -> None:
    """The data's paths (its class's ``path_hparams``: ``data_dir``, ``data_root`` ...) made
    absolute in the config, as the datamodule takes them: the run's ``config.yaml`` (and a
    sweep's ``best_config.yaml``) then names the same data from any folder it is reused in,
    where ``../my_images`` as typed named another."""
    data = config.get("data")
    if data is None or data.get("init_args") is None or not isinstance(data.get("class_path"), str):
        return
    module, _, name = data.class_path.rpartition(".")
    data_cls = getattr(importlib.import_module(module), name, None)  # the config's own class, as LightningCLI's
    for key in getattr(data_cls, "path_hparams", ()):
        value = data.init_args.get(key)
        if isinstance(value, str) and not is_url(value):
            data.init_args[key] = str(expand_home(value, f"--data.{key}").resolve())


def warn_of_direction(stopping: EarlyStopping, model: TaskModule) -> None:
    """An ``EarlyStopping`` added to a run waits for its monitor to fall unless told otherwise
    (Lightning's default ``mode`` is ``min``): on an accuracy it stops the run while it improves.
    The best checkpoint takes its direction from the task; this says where the two disagree."""
    try:
        mode = model.mode_of(stopping.monitor)
    except ConfigError:  # a key the task does not know: Lightning names it when the run logs none
        return
    if stopping.mode != mode:
        rank_zero_warn(
            f"EarlyStopping(monitor={stopping.monitor!r}) has mode {stopping.mode!r}, but {stopping.monitor} is "
            f"better {'higher' if mode == 'max' else 'lower'}: it stops the run as that improves; "
            f"give --trainer.callbacks.mode={mode}"
        )


class CnnSuiteCLI(LightningCLI):
    def __init__(self, *args, **kwargs) -> None:
        #: what a command given ``--ckpt_path`` takes from the checkpoint (see _parse_ckpt_path)
        self.resumed: Resumed | None = None
        #: what trains several runs of this one config (``--seeds``, a sweep), if anything
        self.shared_by: str | None = kwargs.pop("shared_by", None)
        kwargs.setdefault("parser_class", CnnSuiteParser)
        kwargs.setdefault("model_class", TaskModule)
        kwargs.setdefault("datamodule_class", TaskDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        # Abbreviations are refused (``--trainer.max_epoch`` is not ``max_epochs``), and a parsing
        # error is raised, not printed with the usage: parse_arguments makes it one line. The
        # subcommands' parsers take both from this one.
        kwargs["parser_kwargs"] = {
            "description": "cnnsuite: CNN tasks on Lightning (cnnsuite --help lists every command)",
            "allow_abbrev": False,
            "exit_on_error": False,
            **(kwargs.get("parser_kwargs") or {}),
        }
        kwargs.setdefault("save_config_callback", RunConfig)
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """LightningCLI's commands that are cnnsuite's: fit, validate, test (``predict`` is the
        file predictor's name, :mod:`cnnsuite.commands`)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k in LIGHTNING_COMMANDS}

    def parse_arguments(self, parser, args) -> None:
        """LightningCLI's parsing; a mistake in the command line or a config (a mistyped or
        abbreviated key, a missing model, a bad value) is a :class:`~cnnsuite.errors.ConfigError`
        of one line (:func:`config_mistake`)."""
        argv = sys.argv[1:] if args is None else list(args) if isinstance(args, (list, tuple)) else []
        #: the model and data options of the command line, which a resumed run takes only where
        #: they do not define the run (_parse_ckpt_path)
        options = [a.partition("=")[0] for a in argv if isinstance(a, str) and a.startswith("--")]
        self.model_options = [o for o in options if o.startswith("--model.")]
        self.data_options = [o for o in options if o.startswith("--data.")]
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            subparsers = getattr(self, "_subcommand_parsers", {})
            command = next((a for a in argv if a in subparsers), None)
            raise ConfigError(config_mistake(str(err), subparsers.get(command, parser), command)) from None
        except RecursionError:  # jsonargparse loads, checks and quotes a value a level at a time
            raise ConfigError(nested_option(argv)) from None

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        # Fixed names: resuming or re-running never makes "best-v1.ckpt" or metric subfolders.
        # checkpoint.monitor and checkpoint.mode left null follow the task (resolve_monitor).
        parser.set_defaults(
            {
                "checkpoint.filename": "best",
                "checkpoint.mode": None,
                "checkpoint.save_last": False,  # last.ckpt is LastCheckpoint's
                "checkpoint.enable_version_counter": False,
            }
        )
        for key in LINKED:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_argument(
            "--evaluate", type=bool, default=True, help="After fit, evaluate best.ckpt on the test split."
        )
        parser.add_argument(
            "--recipe",
            type=Literal["auto", "configured"],
            default="auto",
            help="How fit trains on one CUDA device when trainer.precision is not set: auto times a few "
            "training steps in fp32 and bf16-mixed, with model.channels_last both ways, and trains with the "
            "fastest (recipe.json in the run folder); configured: as the config says. On a CPU, as configured.",
        )

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """LightningCLI's, which makes the config's optimizer and LR scheduler here: a value one
        of them refuses (a negative learning rate) is the config's mistake, one line naming them."""
        try:
            super()._add_configure_optimizers_method_to_model(subcommand)
        except ValueError as err:
            config = self.config[subcommand] if subcommand else self.config
            keys = [key for key in ("optimizer", "lr_scheduler") if config.get(key) is not None]
            made = " and ".join(f"{key} {config[key].class_path}" for key in keys)
            raise ConfigError(f"{made}: {err}") from None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        absolute_data_paths(config)
        #: whether the best checkpoint follows the task's monitor (checkpoint.monitor left null)
        self.monitor_follows_model = config.get("checkpoint") is not None and config.checkpoint.monitor is None
        #: whether the config gave the checkpoint's mode (kept for the task's monitor too)
        self.mode_given = config.get("checkpoint") is not None and config.checkpoint.mode is not None
        if config.get("checkpoint") is not None:
            if config.checkpoint.save_top_k not in (0, 1):  # one file, best.ckpt: more would each replace it
                raise ConfigError(
                    f"checkpoint.save_top_k={config.checkpoint.save_top_k}: expected 1 (best.ckpt, the best epoch so "
                    "far) or 0 (none): best.ckpt is one file, which each epoch of a larger top k would replace"
                )
            resolve_monitor(config)
        if self.subcommand == "fit" and not config.get("ckpt_path"):
            check_checkpoint_folders(config, self.shared_by)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path last`` is the newest run's ``last.ckpt`` under ``default_root_dir``.

        The model of a run resumed (or validated, tested) from a checkpoint is the checkpoint's,
        as LightningCLI's own method makes it — but not by handing the file's hyper-parameters
        to the parser, which imports any ``class_path`` it meets: the file is checked as every
        command checks it (:func:`~cnnsuite.trust.checkpoint.resume_arguments`: our own classes,
        arguments that fit their signatures, weights that load and are finite, no
        ``backbone_weights`` file read), and only our class path and the checked arguments
        reach the parser."""
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        ckpt_path = resolve_last(config, say=True)
        if not ckpt_path:
            return
        resumed, given, resumed_config = resumed_settings(config, ckpt_path)
        run_data = resumed.data_args
        keys = {o: o.removeprefix("--data.").removeprefix("init_args.") for o in dict.fromkeys(self.data_options)}
        changed = [option for option, k in keys.items() if k in run_data and given.get(k) != run_data[k]]
        unused = [*dict.fromkeys(self.model_options), *changed]
        if unused:
            rank_zero_warn(
                f"--ckpt_path {ckpt_path}: the model and the data settings that define the run are the checkpoint's, "
                f"as the run trained them; {', '.join(unused)} given on the command line not used"
            )
        self.resumed = resumed
        self.config = self.parser.parse_object({self.config.subcommand: resumed_config}, self.config)
        self._parser(self.config.subcommand).resumed_taken = True  # its config.yaml: read the file once

    def check_run(self) -> None:
        """The model and data a command was given, before its Trainer is built (LightningCLI makes
        the Trainer right after them) or a recipe timed on them: a resumed checkpoint's classes
        must be the data's, the model must take the data's samples, and the run's folder must be a
        folder (not a file) outside the data folder, which is only read. A resumed run's split is
        its checkpoint's from the start: one decided afresh would be checked and written over the
        run's ``splits.json``, and data without the run's samples only refused after that."""
        if self.resumed is not None:  # the data's classes, linked to the model, must be the run's
            ckpt_path, args, splits = self.resumed.ckpt_path, self.resumed.model_args, self.resumed.splits
            names = args.get("class_names") or [str(i) for i in range(args["num_classes"])]
            check_matches(names, args.get("in_channels"), self.datamodule, ckpt_path)
            if splits is not None:
                self.datamodule.use_splits(splits, f"--ckpt_path {ckpt_path}: its split")
        check_rebuildable(self.model)
        check_model_fits_data(self.model, self.datamodule)
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = root_dir(config)
        if root.exists() and not root.is_dir():  # else "[Errno 17] File exists", naming no option
            raise ConfigError(f"--trainer.default_root_dir {root}: is a file; expected a folder for the runs")
        self.datamodule.check_writes_outside("trainer.default_root_dir", root)

    def instantiate_trainer(self, **kwargs):
        """Default loggers (TensorBoard and CSV sharing the run's ``version_N``, decided once
        for all processes and kept on resume; without a logger the run's files go to that
        folder all the same), atomic checkpoint writes, and on one CUDA device the recipe
        (:meth:`choose_recipe`). The run's checks come first (:meth:`check_run`)."""
        self.check_run()
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.monitor_follows_model and follow_model_monitor(config, self.model, self.mode_given):
            # The checkpoint callback is made again from its config, with the model's monitor.
            built = self.config_init[self.subcommand] if self.subcommand else self.config_init
            built["checkpoint"] = BestCheckpoint(**config.checkpoint.as_dict())
        root = root_dir(config)
        # a fit resumed goes on in its run's folder; validate and test log to a folder of their own
        resumed = config.get("ckpt_path") if self.subcommand == "fit" else None
        if config.trainer.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(root, run_version(root, resumed))
        elif config.trainer.get("logger") is False and self.subcommand == "fit":  # the run's files still get a folder
            kwargs["default_root_dir"] = str(root / f"version_{run_version(root, resumed)}")
        if not config.trainer.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        for callback in callbacks:
            if isinstance(callback, EarlyStopping):
                warn_of_direction(callback, self.model)
        added = []
        if config.trainer.get("enable_model_summary") is not False and not any(
            isinstance(cb, ModelSummary) for cb in callbacks
        ):
            added.append(CompactModelSummary())
        device = recipe_device(config.trainer) if self.subcommand == "fit" else None
        if device is not None:
            choice = self.choose_recipe(config, device)
            if choice is not None and choice.chosen.precision != recipe.FULL_PRECISION:
                kwargs["precision"] = choice.chosen.precision
            added.append(recipe.RecipeRecord(choice))
        if added:
            kwargs["callbacks"] = [*callbacks, *added]
        return super().instantiate_trainer(**kwargs)

    def choose_recipe(self, config, device: torch.device) -> recipe.Choice | None:
        """With ``--recipe auto`` and no ``trainer.precision`` or ``trainer.deterministic`` (a run
        that asks to be reproduced is not shaped by a timing), the fastest way to train this
        model on ``device`` (:mod:`cnnsuite.training.recipe`), its layout applied to the model; a
        resumed run goes on with its checkpoint's. None where the config is the recipe, and
        where the timing fails (the fit is not lost for it: it trains as configured, and says why)."""
        if config.get("recipe") != "auto" or config.trainer.get("precision") is not None:
            return None
        if config.trainer.get("deterministic"):
            return None
        if self.resumed is not None:
            return recipe.kept(load_checkpoint(self.resumed.ckpt_path), self.model, self.datamodule, device)
        try:
            choice = recipe.choose(self.model, self.datamodule, device, config.trainer.get("benchmark"))
        except NotImplementedError as err:  # a datamodule of one's own without a synthetic batch
            rank_zero_info(f"--recipe auto: nothing to time a training step on ({err}); training as configured")
            return None
        except Exception as err:  # a way that fails to run (out of memory, an op bf16 lacks) is no recipe
            traceback.clear_frames(err.__traceback__)  # the frames hold the copies: freed here, not later
            recipe.release(device)
            rank_zero_warn(
                f"--recipe auto: timing the ways to train failed ({type(err).__name__}: {err}); training as "
                "configured (--recipe configured skips the timing)"
            )
            return None
        recipe.apply(choice.chosen, self.model)
        return choice

    def after_fit(self) -> None:
        """Evaluate ``best.ckpt`` in one process. After a distributed fit the other ranks
        leave and the process group goes first: the evaluation's metrics would otherwise wait
        to synchronise with ranks that never come."""
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective call: every rank asks
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        last = next((cb.last_model_path for cb in trainer.callbacks if isinstance(cb, LastCheckpoint)), "")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            trainer.strategy.barrier()
            torch.distributed.destroy_process_group()
        if not trainer.is_global_zero:
            return
        if not best:
            callback = trainer.checkpoint_callback
            if callback is None:
                why = "checkpointing is off"
            elif callback.save_top_k == 0:
                why = "checkpoint.save_top_k is 0"
            else:
                why = (
                    f"no validation scored {callback.monitor} before the run ended: fast_dev_run, trainer.max_time, "
                    "or fewer epochs than trainer.check_val_every_n_epoch"
                )
            print(f"no best.ckpt ({why}): nothing to evaluate" + (f"; last.ckpt: {last}" if last else ""))
            return
        run_dir = Path(log_dir)
        print(f"\nrun folder: {run_dir}\ncheckpoints: {best} (best), {last or 'none'} (last)")
        if self._get(self.config, "evaluate"):
            from .use.evaluate import evaluate_into, print_metrics

            datamodule = self.datamodule  # where this command read its data is the user's say
            local = {k: datamodule.hparams.get(k) for k in datamodule.local_hparams() if k != "split_file"}
            shown = trainer.progress_bar_callback is not None  # --trainer.enable_progress_bar false: none here either
            # the run folder's evaluation/, wherever checkpoint.dirpath and filename put best.ckpt
            metrics, out_dir = evaluate_into(best, run_dir / "evaluation", data=local, progress_bar=shown)
            print_metrics(metrics, out_dir)
        else:
            metrics, out_dir = {}, None
        callback = trainer.checkpoint_callback
        print(result_line(Path(best), callback.monitor, callback.best_model_score, metrics, out_dir))


def recipe_device(trainer) -> torch.device | None:
    """The one CUDA device a fit with this ``trainer`` config trains on in one process, or None:
    a CPU, several processes (devices, nodes, a launcher's ``WORLD_SIZE``, a strategy's own), an
    accelerator or a strategy given as an object, or plugins of the config's own."""
    if trainer.get("accelerator") not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return None
    # a strategy that starts processes of its own (ddp_fork, say) even for one device, or
    # precision plugins a precision would clash with
    if trainer.get("strategy") not in (None, "auto", "single_device") or trainer.get("plugins"):
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or (trainer.get("num_nodes") or 1) > 1:
        return None
    devices = trainer.get("devices")
    if devices in (1, "1") or (devices in ("auto", -1, "-1") and torch.cuda.device_count() == 1):
        return torch.device("cuda", 0)
    if isinstance(devices, (list, tuple)) and len(devices) == 1:
        return torch.device("cuda", int(devices[0]))
    return None


def result_line(best: Path, monitor: str | None, score, metrics: dict[str, float], out_dir: Path | None) -> str:
    """The fit in one line, last: the best checkpoint, the value that chose it, the same
    metric on the test split and where the evaluation went."""
    chosen = f" ({monitor} {float(score):.4f})" if monitor and score is not None else ""
    test_key = on_test_split(monitor) if monitor else None
    tested = f"; {test_key} {shown_metric(metrics[test_key])}" if test_key in metrics else ""
    where = f"; evaluation in {out_dir}/" if out_dir is not None else "; not evaluated (--evaluate false)"
    return f"result: {best}{chosen}{tested}{where}"


def task_config_args(argv: list[str]) -> list[str]:
    """``--task NAME`` → ``--config <NAME's packaged config>`` in its place (configs given after
    it merge over it): a task is found by name wherever cnnsuite is installed, from any folder."""
    out, rest = [], iter(argv)
    for arg in rest:
        if arg != "--task" and not arg.startswith("--task="):
            out.append(arg)
            continue
        name = arg.partition("=")[2] if "=" in arg else next(rest, "")
        task = task_named(name)
        check_task_classes(task)
        out += ["--config", str(task.config)]
    return out


def check_task_classes(task) -> None:
    """:func:`~cnnsuite.contract.check_config_classes` of the task's own config file, which must
    read as YAML (:func:`read_config`)."""
    check_config_classes(task, read_config(task.config, str(task.config)))


def check_config_files(argv: list[str]) -> None:
    """Each ``--config`` file must read as YAML (:func:`read_config`). A ``--task``'s config is
    read when the task is (:func:`task_config_args`), after this check."""
    given = [arg.partition("=")[2] for arg in argv if arg.startswith("--config=")]
    given += [value for flag, value in zip(argv, argv[1:], strict=False) if flag in ("--config", "-c")]
    for name in given:
        path = expand_home(name, "--config")
        if path.is_file():  # jsonargparse takes a YAML string too, and names a path that is not there
            read_config(path, name)


def read_config(path: Path, name: str) -> object:
    """The YAML of a config file (``name``, as given): one that does not read is a one-line
    error naming it, since jsonargparse says where a mistake is in it (``line 3, column 23``)
    but not in which file (``"<unicode string>"``), and a run may merge several."""
    import yaml

    try:
        return parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{name}: not YAML ({problem}{where})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{name}: cannot be read ({err})") from None


def nested_option(argv: list[str]) -> str:
    """What a command line whose parsing ran past Python's recursion limit is told: the option
    whose value, or the YAML file it names (``--data data.yaml``), nests too deeply, as
    :func:`~cnnsuite.data.textfiles.parse_yaml` finds it. The ``--config`` files were read
    before (:func:`check_config_files`): else it is a file one of them names (``data: data.yaml``)."""
    import yaml

    given = [arg.partition("=")[::2] for arg in argv if arg.startswith("--") and "=" in arg]
    given += [(flag, value) for flag, value in zip(argv, argv[1:], strict=False) if flag.startswith("-")]
    for option, value in given:
        try:
            path = Path(value).expanduser()
            named = path.suffix in (".yaml", ".yml", ".json") and path.is_file()
        except (OSError, RuntimeError):  # a name too long for the system, a ~user unknown here: text
            named = False
        try:
            parse_yaml(path.read_text() if named else value)
        except NestedTooDeeply as err:
            return f"{option} {value}: {err}" if named else f"{option}: {err}"
        except (yaml.YAMLError, OSError, UnicodeDecodeError):  # not YAML: jsonargparse took it as text
            continue
    return f"a file named in a --config file: {NestedTooDeeply()}"


def fit_run(argv: list[str], callbacks: list | None = None, shared_by: str | None = None) -> dict:
    """One ``cnnsuite fit`` with ``argv`` (its options, ``--task`` included), in this process and
    through the same path as the command (``callbacks`` join the config's, unsaved in its
    ``config.yaml``; ``shared_by``: what trains other runs of this config, see
    :func:`check_checkpoint_folders`), and what it gave: its run folder, the metric that chose its
    best checkpoint with that value, and the same metric on the test split (None unless evaluated)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARGS_AND_ARGV)
        cli = CnnSuiteCLI(
            args=["fit", *task_config_args(argv)], trainer_defaults={"callbacks": callbacks or []}, shared_by=shared_by
        )
    callback = cli.trainer.checkpoint_callback
    run = Path(cli.trainer.log_dir)
    test_key = on_test_split(callback.monitor)
    evaluated = run / "evaluation" / "metrics.json"
    test = json.loads(evaluated.read_text()).get(test_key) if evaluated.is_file() else None
    score = callback.best_model_score
    return {"run": str(run), callback.monitor: None if score is None else float(score), test_key: test}


def seeds_option(argv: list[str]) -> tuple[list[str], list[int]]:
    """``argv`` without ``--seeds A,B,...`` (a cnnsuite option of ``fit``, not a config key), and
    those seeds (none when it is absent)."""
    out, seeds, rest = [], [], iter(argv)
    for arg in rest:
        if arg != "--seeds" and not arg.startswith("--seeds="):
            out.append(arg)
            continue
        text = arg.partition("=")[2] if "=" in arg else next(rest, "")
        try:
            seeds = [int(s) for s in text.split(",")]
        except ValueError:
            seeds = []
        if len(seeds) < 2 or len(set(seeds)) < len(seeds) or argv[0] != "fit":
            raise ConfigError(f"--seeds {text!r}: expected two or more different whole numbers, 0,1,2 (fit only)")
    if seeds and any(a == "--ckpt_path" or a.startswith("--ckpt_path=") for a in out):
        # every seed would resume the one run named, and the summary average that run with itself
        raise ConfigError("--seeds with --ckpt_path: each seed trains a run of its own from the start; resume a seed's "
                          "run with --ckpt_path alone")  # fmt: skip
    return out, seeds


def fit_seeds(argv: list[str], seeds: list[int]) -> None:
    """``cnnsuite fit ... --seeds 0,1,2``: the config trained once per seed, each a run folder of
    its own, and each run's values with their mean and standard deviation over the seeds
    (sample, n - 1) printed and written as ``seeds.json`` beside the runs (``seeds-2.json`` ... where
    an earlier summary is there). A recipe the first
    seed's run chose on its GPU is every other seed's too: seeds compare weights, not recipes."""
    runs = [{"seed": seeds[0], **fit_run([*argv, "--seed_everything", str(seeds[0])], shared_by="--seeds")}]
    pinned = recipe.pinned(Path(runs[0]["run"]))  # every seed in the first one's recipe
    runs += [{"seed": seed, **fit_run([*argv, *pinned, "--seed_everything", str(seed)], shared_by="--seeds")}
             for seed in seeds[1:]]  # fmt: skip
    keys = [k for k in runs[0] if k not in ("seed", "run") and all(r[k] is not None for r in runs)]
    summary = {k: {"mean": statistics.mean(r[k] for r in runs), "std": statistics.stdev(r[k] for r in runs)}
               for k in keys}  # fmt: skip
    root = Path(runs[0]["run"]).parent
    # the first summary in the folder is seeds.json; later seeds' are seeds-2.json ..., none written over
    names = itertools.chain(["seeds.json"], (f"seeds-{n}.json" for n in itertools.count(2)))
    path = next(root / name for name in names if not (root / name).exists())
    path.write_text(strict_json({"runs": runs, **summary}, indent=2) + "\n")
    print("\n".join(f"seed {r['seed']}: {r['run']}  " + "  ".join(f"{k} {r[k]:.4f}" for k in keys) for r in runs))
    print(f"{len(seeds)} seeds ({path}): "
          + "; ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary.items()))  # fmt: skip


def config_mistake(message: str, parser, command: str | None) -> str:
    """One line for a LightningCLI parsing error (jsonargparse's ``message``; ``parser`` is the
    command's): an unknown key (mistyped, abbreviated, or not an argument of the class the
    config names) with the closest valid keys; no model or data chosen with the tasks'
    configs; any other mistake as jsonargparse says it, on one line."""
    prefix = f"{command}." if command else ""
    where = f"cnnsuite {command or 'fit'}"  # no command: a sweep's probe, whose keys are fit's
    if required := re.match(r"the following arguments are required: (.*)", message):
        missing = [key.strip().removeprefix(prefix) for key in required[1].split(",")]
        if {"model", "data"} & set(missing):
            return (
                f"no task chosen: --task one of {', '.join(sorted(registered_tasks()))}, or a config, "
                f"--config one of {', '.join(task_configs())} (or --model and --data class paths)"
            )
        return f"missing {', '.join(missing)}"
    unknown = unknown_keys(message, parser, prefix)
    if unknown is not None:
        return f"{unknown} ({where} --help lists the keys)"
    wrong = wrong_value(message, prefix)
    if wrong is not None:
        return wrong
    lines = [line.strip().lstrip("-").strip() for line in message.splitlines()]
    noise = ("Does not validate against any", "Subtypes:", "Errors:", "Given value type:",
             "Expected a <class 'NoneType'>")  # fmt: skip
    lines = [line for line in lines if line and not line.startswith(noise)]
    return re.sub(r'^Parser key "([^"]+)":;?\s*', lambda key: f"{key[1].removeprefix(prefix)}: ", "; ".join(lines))


#: how :func:`wrong_value` names the types jsonargparse expects
TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
              "dict": "a mapping ({key: value})", "list": "a list ([a, b])", "Iterable": "a list ([a, b])"}  # fmt: skip


def wrong_value(message: str, prefix: str = "") -> str | None:
    """What :func:`config_mistake` says of a value of the wrong type (``--trainer.max_epochs x``,
    ``--trainer.logger CSVLoger``): the key as typed, what it takes (a class named by the base
    class jsonargparse lists, where it takes one) and what it got, in place of jsonargparse's
    account of the Unions it tried; None when ``message`` is about something else."""
    lines = message.splitlines()
    owner = re.match(r'Parser key "([\w.]+)":', lines[0]) if lines else None
    if owner is None:
        return None
    key, body = owner[1].removeprefix(prefix), lines[1:]
    nested = next((i for i, line in enumerate(body) if "Problem with given class_path" in line), None)
    if nested is not None:  # an argument of the class the config names: the lines indented below it
        depth = len(body[nested]) - len(body[nested].lstrip())
        inner = list(itertools.takewhile(lambda line: len(line) - len(line.lstrip()) > depth, body[nested + 1 :]))
        field = re.match(r'\s*Parser key "([\w.]+)":', inner[0]) if inner else None
        if field is None:
            return None
        key, body = f"{key}.{field[1]}", inner[1:]
    text = "\n".join(body)
    if arg := re.search(r"Given value: NestedArg\(key='(\w+)'", text):  # --trainer.logger.init_args.save_dir alone
        return f"{key}.init_args.{arg[1]}: {key} names no class to give {arg[1]} to; give --{key} CLASS before it"
    takes = [literal.replace(", ", " or ") for literal in re.findall(r"Expected a typing\.Literal\[(.*?)\]", text)]
    if "Expected a dot import path string" in text:  # a class, by name or class_path: the base class listed
        subtypes = re.search(r"Subtypes: (.*)", text)
        bases = [name for name in re.findall(r"<class '([\w.]+)'>", subtypes[1] if subtypes else "") if "." in name]
        takes.append(f"a {bases[0].rsplit('.', 1)[-1] + ' ' if bases else ''}class (its name or class_path)")
    kinds = [kind for kind in re.findall(r"Expected a <class '(?:[\w]+\.)*(\w+)'>", text) if kind != "NoneType"]
    takes += [TYPE_WORDS.get(kind, f"a {kind}") for kind in kinds]
    given = re.search(r"(?:Got value|Given value): (.*)", text)
    if not takes or given is None:
        return None
    takes = list(dict.fromkeys(takes))
    said = " or ".join(takes) if len(takes) < 3 else f"{', '.join(takes[:-1])}, or {takes[-1]}"
    return f"{key}: expected {said}, got {given[1].strip()!r}"


def unknown_keys(message: str, parser, prefix: str = "") -> str | None:
    """What :func:`config_mistake` says of unknown keys, or None when ``message`` is about
    something else."""
    nested = re.search(
        r"Problem with given class_path '([\w.]+)':\s*(?:Option|Key) '([\w.]+)' is not (?:accepted|expected)", message
    )
    if nested:
        owner = re.match(r'Parser key "([\w.]+)"', message)
        # as typed on the command line (--data.batch_size; --data.init_args.batch_size is the same key)
        owner = owner[1].removeprefix(prefix) if owner else "init_args"
        return describe_unknown(f"{owner}.{nested[2]}", [f"{owner}.{k}" for k in class_keys(nested[1])])
    if found := re.match(r"unrecognized arguments: (.*)", message, re.DOTALL):
        tokens = found[1].split()
        keys = [t[2:].split("=", 1)[0] for t in tokens if t.startswith("--")]
        if not keys:
            return f"unexpected argument{'s' if len(tokens) > 1 else ''} {' '.join(tokens)}"
        candidates = parser_keys(parser)
        return "; ".join(describe_unknown(k.removeprefix(prefix), candidates) for k in keys)
    if found := re.match(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message):
        return describe_unknown(f"{found[1]}.{found[2]}".removeprefix(prefix), parser_keys(parser))
    if found := re.match(r"Subcommand '\w+' does not accept option '([\w.]+)'", message):  # a config file's key
        return describe_unknown(found[1].removeprefix(prefix), parser_keys(parser))
    if found := re.match(r"(?:Option|Key) '([\w.]+)' is not (?:accepted|expected)", message):
        return describe_unknown(found[1].removeprefix(prefix), parser_keys(parser))
    return None


def parser_keys(parser) -> list[str]:
    """The keys a (jsonargparse) parser takes: ``trainer.max_epochs``, ``checkpoint.monitor`` ..."""
    options = (o[2:] for action in parser._actions for o in action.option_strings if o.startswith("--"))
    return sorted({o for o in options if o not in ("help", "print_config") and not o.endswith((".help", "+"))})


def class_keys(path: str) -> list[str]:
    """The init arguments of the class a config names (jsonargparse already imported it)."""
    from jsonargparse import ArgumentParser

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        probe = ArgumentParser(exit_on_error=False)
        probe.add_class_arguments(cls, "x", fail_untyped=False)
    except Exception:  # the suggestions are a help: without them the key is still named
        return []
    return [key.removeprefix("x.") for key in parser_keys(probe) if key.startswith("x.")]


def user_error(err: BaseException) -> BaseException | None:
    """The first user error in the chain of ``err`` (jsonargparse, Lightning and PyTorch wrap
    an error raised inside a class or a loader in their own, ``raise ... from`` it), or None:
    a bug. Only causes are followed, not the error being handled when ``err`` was raised: a
    bug in an ``except OSError:`` block (a ``KeyError`` there) keeps its traceback, not the
    one line of the ``OSError`` it met."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def user_message(err: BaseException) -> str:
    """The message of a user's mistake, as first raised: jsonargparse wraps an error from a
    class's ``__init__`` in its own (the original is its cause), and an error raised in a
    DataLoader worker arrives as "Caught X in DataLoader worker process N. Original
    Traceback ..." with the original message at its end. The suite's own :class:`UserError`
    is the message where it is met: it names the file or key, and the reason of the error it
    was raised from (an ``OSError`` of a full disk names no file)."""
    while not isinstance(err, UserError):
        # "raise ... from None" hides the context: the error raised there is the message
        inner = err.__cause__ if err.__cause__ is not None or err.__suppress_context__ else err.__context__
        if not isinstance(inner, USER_ERRORS):
            break
        err = inner
    message = str(err).strip() or type(err).__name__
    caught = re.match(r"Caught (\w+) in DataLoader worker process \d+\.", message)
    if caught and "Original Traceback" in message:
        lines = message.splitlines()
        # the original's last line: "X: its message", or the bare "X" of an error raised without one
        starts = [i for i, line in enumerate(lines) if re.match(rf"([\w.]+\.)?{caught[1]}(: |$)", line)]
        if starts:
            first = lines[starts[-1]].partition(": ")[2] or caught[1]
            message = "\n".join([first, *lines[starts[-1] + 1 :]])
    return printable(message)


class DropTips(logging.Filter):
    """Lightning's "💡 Tip:" lines advertise its cloud services on every fit, and it says so when
    it takes our model summary instead of its own; MONAI says on every DICOM reader it builds that
    an optional GPU decoder is not installed: nothing a user of this suite can act on."""

    NOISE = (
        "💡 Tip:",
        "Trainer already configured with model summary callbacks",
        "nvImageCodec is not available",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOISE)


class SayDevicesOnce(logging.Filter):
    """Every Trainer says which devices it found ("GPU available: False, used: False"): a fit,
    the evaluation after it, each seed's fit and each sweep trial, the same lines again. Each
    such line is shown the first time this process says it."""

    DEVICE_LINES = ("GPU available:", "TPU available:", "HPU available:")

    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.DEVICE_LINES):
            return True
        first = message not in self.said
        self.said.add(message)
        return first


#: warnings raised inside the libraries we call about their own use of another library: a user
#: can do nothing about them (``LeafSpec``: Lightning's use of torch's pytree; ``NvImgCodec``:
#: MONAI's DICOM reader without the optional GPU decoder)
THIRD_PARTY_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",
    # torchmetrics' ROC on batches that lack a class: Lightning's sanity check validates on two
    # batches, which an unshuffled, class-sorted validation split fills with one or two classes
    r"No positive samples in targets, true positive value should be meaningless",
    # torch's .pt2 writer on a channels_last weight (not "contiguous", so not "complete"): it
    # saves the weight's whole storage all the same
    r"No complete tensor found in the group",
)


def quiet_third_party() -> None:
    """Keep third-party output a user can do nothing about off the terminal."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "monai.data.nvimgcodec_pydicom_plugin",
    ):
        logger = logging.getLogger(name)
        for kind in (DropTips, SayDevicesOnce):
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())
    for message in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def main(argv: list[str] | None = None) -> None:
    """The ``cnnsuite`` command; ``argv`` (default: the command line) without the program name.
    The first argument names a command of :data:`~cnnsuite.commands.COMMANDS`."""
    quiet_third_party()
    command_line = argv is None
    argv = sys.argv[1:] if command_line else list(argv)
    debug = "--debug" in argv or os.environ.get("CNNSUITE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if command_line and debug:
        # Lightning's DDP launcher starts the other ranks as copies of sys.argv: they learn
        # of --debug from the environment.
        sys.argv[1:] = argv
        os.environ["CNNSUITE_DEBUG"] = "1"
    name = argv[0] if argv else None
    prog = f"cnnsuite {name}" if name in COMMANDS else "cnnsuite"
    try:
        asked = help_requested(argv)
        if asked is not None:
            print_table(asked)
        elif name in LIGHTNING_COMMANDS or name.startswith("-"):  # top-level LightningCLI options too
            check_config_files(argv)
            if any(a == "--task" or a.startswith("--task=") for a in argv):
                argv = task_config_args(argv)
                if command_line:  # what Lightning's DDP launcher starts the other ranks with
                    sys.argv[1:] = argv
            argv, seeds = seeds_option(argv)
            if seeds:
                fit_seeds(argv[1:], seeds)
            elif command_line:
                CnnSuiteCLI(args=None)
            else:  # called from Python: the calling script's own command line is not ours to mind
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=ARGS_AND_ARGV)
                    CnnSuiteCLI(args=argv)
        elif name in COMMANDS:
            COMMANDS[name].run(argv[1:])
        else:
            raise ConfigError(unknown_command(name))
    except Exception as err:
        mistake = user_error(err)
        if debug or mistake is None:
            raise
        sys.stderr.write(f"{prog}: error: {user_message(mistake)}\n")
        sys.exit(2)
