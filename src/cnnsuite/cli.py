"""The ``cnnsuite`` command: LightningCLI's fit/validate/test/predict, plus ``evaluate``.

    cnnsuite fit --config tasks/recognition2d/config.yaml --data.data_dir ~/my_images
    cnnsuite evaluate --ckpt runs/recognition2d/version_0/checkpoints/best.ckpt [more.ckpt ...]
    cnnsuite predict --ckpt .../best.ckpt --input photos/ [--out DIR]

Model and data are chosen in the config by class path (subclass mode); the model's
``num_classes``, ``in_channels`` and ``class_names`` are linked from the datamodule. Every
run writes under ``trainer.default_root_dir``: ``version_N/`` with the config, TensorBoard
events, ``metrics.csv``, ``splits.json``, ``checkpoints/{best,last}.ckpt`` and, after fit,
``evaluation/``.

A mistake a user can make (a bad file, a missing folder, an impossible value) ends the
command with one line, ``cnnsuite <command>: error: ...``, and exit status 2; ``--debug``
(or ``CNNSUITE_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from .backbone import StagedBackbone
from .backbone.geometry import check_fits
from .checkpoint import add_data_options, data_options, resume_arguments
from .contract import LINKED
from .data import TaskDataModule
from .runs import AtomicCheckpointIO, LastCheckpoint, RunConfig, default_loggers, default_output, run_version
from .task import TaskModule

#: what a user's data or config can raise (BadFileError, AnnotationError and friends are
#: ValueErrors; a missing file is an OSError; a diverging run a FloatingPointError): shown as
#: one line, not a traceback
USER_ERRORS = (ValueError, OSError, FloatingPointError)


class CnnSuiteParser(LightningArgumentParser):
    """LightningCLI's parser; a config it prints (``--print_config``) or saves (``config.yaml``)
    shows the checkpoint's monitor and mode as the run will use them (:func:`resolve_monitor`)."""

    def dump(self, cfg, *args, **kwargs):
        if cfg.get("checkpoint") is not None and cfg.get("model.class_path"):
            cfg = cfg.clone()
            resolve_monitor(cfg)
        return super().dump(cfg, *args, **kwargs)


def resolve_monitor(config) -> None:
    """The best checkpoint is the best by the task's own measure unless the config says
    otherwise: ``checkpoint.monitor`` null takes the model class's ``monitor`` and ``mode``;
    a monitor without ``checkpoint.mode`` takes the direction the task knows for that key
    (:meth:`~cnnsuite.task.TaskModule.mode_of`, an unknown key is an error naming those logged)."""
    checkpoint = config.checkpoint
    module, _, name = config.model.class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name)  # the user's own config names it
    if checkpoint.monitor is None:
        checkpoint.monitor, checkpoint.mode = model_class.monitor, model_class.mode
        return
    mode = model_class.mode_of(checkpoint.monitor)
    if checkpoint.mode is None:
        checkpoint.mode = mode


class CnnSuiteCLI(LightningCLI):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("parser_class", CnnSuiteParser)
        kwargs.setdefault("model_class", TaskModule)
        kwargs.setdefault("datamodule_class", TaskDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault(
            "parser_kwargs",
            {
                "description": "cnnsuite: CNN tasks on Lightning. Also, on a checkpoint: cnnsuite evaluate --help, "
                "cnnsuite predict --input ... --help, cnnsuite export --help, cnnsuite serve --help, "
                "cnnsuite inspect --help"
            },
        )
        kwargs.setdefault("save_config_callback", RunConfig)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("checkpoint") is not None:
            resolve_monitor(config)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path last`` is the newest run's ``last.ckpt`` under ``default_root_dir``.

        The model of a run resumed (or validated, tested) from a checkpoint is the checkpoint's,
        as LightningCLI's own method makes it — but not by handing the file's hyper-parameters
        to the parser, which imports any ``class_path`` it meets: the file is checked as every
        command checks it (:func:`~cnnsuite.checkpoint.resume_arguments`: our own classes,
        arguments that fit their signatures, weights that load and are finite, no
        ``backbone_weights`` file read), and only our class path and the checked arguments
        reach the parser."""
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        if config.get("ckpt_path") == "last":
            last = newest_last_checkpoint(self._root_dir(config))
            if last is None:  # a first start (a job that will requeue itself, say) begins afresh
                rank_zero_info(
                    f"--ckpt_path last: no version_N/checkpoints/last.ckpt under {self._root_dir(config)} yet"
                )
            config.ckpt_path = str(last) if last else None
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        model_path, args = resume_arguments(ckpt_path)
        model = {"class_path": model_path, "init_args": args}
        self.config = self.parser.parse_object({self.config.subcommand: {"model": model}}, self.config)

    @staticmethod
    def _root_dir(config) -> Path:
        return Path(config.trainer.get("default_root_dir") or os.getcwd())

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        check_model_fits_data(self.model, self.datamodule)

    def instantiate_trainer(self, **kwargs):
        """Default loggers (TensorBoard and CSV sharing the run's ``version_N``, decided once
        for all processes and kept on resume) and atomic checkpoint writes."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = self._root_dir(config)
        if config.trainer.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(root, run_version(root, config.get("ckpt_path")))
        if not config.trainer.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

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
            print("no checkpoint was saved (fast_dev_run?): nothing to evaluate")
            return
        run_dir = Path(log_dir)
        print(f"\nrun folder: {run_dir}\ncheckpoints: {best} (best), {last or 'none'} (last)")
        if self._get(self.config, "evaluate"):
            from .evaluate import evaluate

            out_dir = run_dir / "evaluation"
            datamodule = self.datamodule  # where this command read its data is the user's say
            local = {k: datamodule.hparams.get(k) for k in datamodule.local_hparams() if k != "split_file"}
            print_metrics(evaluate(best, out_dir, data=local), out_dir)


def check_model_fits_data(model: TaskModule, datamodule: TaskDataModule) -> None:
    """Run the model on a zero batch of the data's sample shape, before any data is read or
    written: a network that cannot take the data (a kernel or a stride larger than what
    is left of the input) fails here with its settings named, not after minutes of data
    preparation — a staged backbone first by :func:`~cnnsuite.backbone.geometry.check_fits`,
    which names the stage, the layer and the map it meets. The batch becomes
    ``example_input_array``, so the model summary shows each layer's input and output sizes."""
    shape = datamodule.input_shape
    if shape is None:
        return
    backbone = model.feature_backbone()
    if backbone.strides:  # the usual misfit, said in the network's terms (every backbone has strides)
        stride = tuple(backbone.strides[-1])
        size = tuple(shape[1:])[-len(stride) :]
        if any(s < k for s, k in zip(size, stride, strict=True)):
            raise ValueError(
                f"the data's samples of shape {tuple(shape)} are {'x'.join(map(str, size))} where the backbone's "
                f"total stride is {'x'.join(map(str, stride))}: use larger samples (data.*) or fewer or gentler "
                "pooling stages (model.backbone_kwargs)"
            )
    if isinstance(backbone, StagedBackbone) and len(shape) == backbone.spatial_dims + 1:
        # a kernel or window larger than the map it meets, named by stage and layer
        check_fits(backbone, shape, where=f"model.backbone_kwargs (model.backbone={model.hparams.get('backbone')!r})")
    example = torch.zeros(2, *shape)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as err:
        settings = {k: model.hparams[k] for k in ("backbone", "backbone_kwargs") if k in model.hparams}
        reason = str(err).strip().splitlines()[0]
        raise ValueError(
            f"the model {settings} cannot take the data's samples of shape {tuple(shape)}: {reason}"
        ) from None
    finally:
        model.train(training)
    model.example_input_array = example


def newest_last_checkpoint(root: Path) -> Path | None:
    """``<root>/version_N/checkpoints/last.ckpt`` of the highest N that has one."""
    found = sorted(
        (int(m[1]), path)
        for path in Path(root).glob("version_*/checkpoints/last.ckpt")
        if (m := re.fullmatch(r"version_(\d+)", path.parent.parent.name))
    )
    return found[-1][1] if found else None


def print_metrics(metrics: dict[str, float], out_dir: Path) -> None:
    headline = {k: v for k, v in metrics.items() if k.count("/") == 1}
    print("\n".join(f"  {k:<16} {v:.4f}" for k, v in headline.items()))
    print(f"evaluation: {out_dir}/ (metrics.json, report.md, plots)")


def evaluate_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnsuite evaluate",
        description="Evaluate checkpoints on their run's test split (or on other data): metrics.json, report.md "
        "and plots; several checkpoints also give comparison.md and comparison.json.",
    )
    parser.add_argument("--ckpt", required=True, nargs="+", help="checkpoint(s) written by cnnsuite fit")
    add_data_options(parser)
    parser.add_argument(
        "--out", default=None,
        help="output folder (default: <run folder>/evaluation; with several checkpoints, ./comparison)",
    )  # fmt: skip
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    args, extra = parser.parse_known_args(argv)
    data = data_options(args, extra, parser)
    from .evaluate import compare, evaluate_into

    if len(args.ckpt) == 1:
        print_metrics(*evaluate_into(args.ckpt[0], args.out, accelerator=args.accelerator, data=data))
        return
    out_dir = Path(args.out or "comparison")
    compare(args.ckpt, out_dir, accelerator=args.accelerator, data=data)
    print((out_dir / "comparison.md").read_text())
    print(f"comparison: {out_dir}/ (comparison.md, comparison.json, one evaluation folder per checkpoint)")


def predict_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnsuite predict",
        description="Predict raw files with a checkpoint, preprocessed as its run's test split: predictions.jsonl, "
        "one picture per input, summary.json. (LightningCLI's own predict, with --config, is still there.)",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by cnnsuite fit")
    parser.add_argument("--input", required=True, help="a file, a DICOM series folder, or a folder of inputs")
    parser.add_argument("--out", default=None, help="output folder (default: <run folder>/predictions/<input name>)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--no_pictures", action="store_true", help="write predictions.jsonl only")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    args = parser.parse_args(argv)
    from .predict import Predictor, predict_to_folder, summary_line

    out_dir = Path(args.out) if args.out else default_output(args.ckpt, "predictions") / Path(args.input).name
    predictor = Predictor(args.ckpt, args.accelerator)
    summary = predict_to_folder(predictor, args.input, out_dir, args.batch_size, not args.no_pictures)
    print(summary_line(summary, out_dir))


def user_message(err: BaseException) -> str:
    """The message of a user's mistake, as first raised: jsonargparse wraps an error from a
    class's ``__init__`` in its own (the original is its cause), and an error raised in a
    DataLoader worker arrives as "Caught X in DataLoader worker process N. Original
    Traceback ..." with the original message at its end."""
    while True:
        # "raise ... from None" hides the context: the error raised there is the message
        inner = err.__cause__ if err.__cause__ is not None or err.__suppress_context__ else err.__context__
        if not isinstance(inner, USER_ERRORS):
            break
        err = inner
    message = str(err).strip() or type(err).__name__
    caught = re.match(r"Caught (\w+) in DataLoader worker process \d+\.", message)
    if caught and "Original Traceback" in message:
        lines = message.splitlines()
        start = max(i for i, line in enumerate(lines) if re.match(rf"([\w.]+\.)?{caught[1]}: ", line))
        message = "\n".join([lines[start].split(": ", 1)[1], *lines[start + 1 :]])
    return message


def main(argv: list[str] | None = None) -> None:
    """The ``cnnsuite`` command; ``argv`` (default: the command line) without the program name."""
    command_line = argv is None
    argv = sys.argv[1:] if command_line else list(argv)
    debug = "--debug" in argv or os.environ.get("CNNSUITE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if command_line and debug:
        # Lightning's DDP launcher starts the other ranks as copies of sys.argv: they learn
        # of --debug from the environment.
        sys.argv[1:] = argv
        os.environ["CNNSUITE_DEBUG"] = "1"
    prog = f"cnnsuite {argv[0]}" if argv and not argv[0].startswith("-") else "cnnsuite"
    try:
        if argv[:1] == ["evaluate"]:
            evaluate_main(argv[1:])
        elif argv[:1] == ["predict"] and any(a == "--input" or a.startswith("--input=") for a in argv):
            predict_main(argv[1:])
        elif argv[:1] == ["export"]:
            from .export import export_main

            export_main(argv[1:])
        elif argv[:1] == ["inspect"]:
            from .inspection import inspect_main

            inspect_main(argv[1:])
        elif argv[:1] == ["serve"]:
            from .serve import serve_main

            serve_main(argv[1:])
        elif argv[:1] == ["bench"]:
            from .bench import bench_main

            bench_main(argv[1:])
        else:
            CnnSuiteCLI(args=None if command_line else argv)  # args= alone warns, given a command line
    except USER_ERRORS as err:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {user_message(err)}\n")
        sys.exit(2)
