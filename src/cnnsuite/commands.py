"""The ``cnnsuite`` command table: every command with its one line of help, and the options
that several commands share, each declared once.

``fit``, ``validate`` and ``test`` are LightningCLI's (:class:`cnnsuite.cli.CnnSuiteCLI`): a
config, a model and its data. The others work from a checkpoint alone (or, ``bench``, from the
tasks' default configs) and are plain ``argparse`` commands whose ``main(argv)`` the table
names. ``cnnsuite --help`` prints the table; ``cnnsuite <command> --help`` is that command's
own help.

LightningCLI's own ``predict`` (``Trainer.predict`` over a config's datamodule) is not a
command: ``cnnsuite predict`` is the file predictor (``--ckpt ... --input ...``), and a test
split is scored by ``cnnsuite evaluate``.

This module imports nothing heavy: the table and the help are read before any command runs.
:func:`reference` writes the CLI reference (``docs/cli.md``, ``make docs``) from this table and
the commands' own parsers, so the document cannot drift from the code (a test compares them).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import importlib
import io
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from .allocator import keep_freed_memory


@dataclass(frozen=True)
class Command:
    #: the command's line in ``cnnsuite --help``
    summary: str
    #: ``"module:function"`` taking the command's arguments; None for LightningCLI's own
    main: str | None = None

    def run(self, argv: list[str]) -> None:
        module, _, function = self.main.partition(":")
        getattr(importlib.import_module(module), function)(argv)


#: every ``cnnsuite`` command, in the order ``cnnsuite --help`` lists them
COMMANDS: dict[str, Command] = {
    "fit": Command("train a task's model from its config (--task NAME, or --config FILE), then evaluate "
                   "best.ckpt [LightningCLI]"),
    "validate": Command("score a config's model (--ckpt_path for a checkpoint's) on the validation split "
                        "[LightningCLI]"),
    "test": Command("score a config's model (--ckpt_path for a checkpoint's) on the test split [LightningCLI]"),
    "prepare": Command("write a task's data once as LitData shards (--task, --out) that fit streams with "
                       "--data.data_dir OUT", "cnnsuite.data.shards:prepare_main"),
    "evaluate": Command("a checkpoint on its run's test split or other data: metrics.json, report.md, plots; "
                        "several checkpoints: comparison", "cnnsuite.use.evaluate:evaluate_main"),
    "predict": Command("predict raw files with a checkpoint (--ckpt, --input): predictions.jsonl, pictures, "
                       "summary.json", "cnnsuite.use.predict:predict_main"),
    "export": Command("export a checkpoint's network to ONNX or torch.export, checked against PyTorch",
                      "cnnsuite.use.export:export_main"),
    "inspect": Command("look inside a checkpoint's network: filters, feature maps, top samples, Grad-CAM, "
                       "stage table", "cnnsuite.use.inspection:inspect_main"),
    "serve": Command("serve a checkpoint over HTTP (LitServe): POST a file to /predict",
                     "cnnsuite.use.serve:serve_main"),
    "sweep": Command("search a task's hyper-parameters with Optuna (--space FILE, --trials N), each trial a fit run; "
                     "resumable, shared by processes on one database", "cnnsuite.training.sweep:sweep_main"),
    "bench": Command("measure every task's model, training settings, data pipeline, training against references, "
                     "cost as data grows", "cnnsuite.bench:bench_main"),
}  # fmt: skip
#: the commands LightningCLI parses and runs
LIGHTNING_COMMANDS = tuple(name for name, command in COMMANDS.items() if command.main is None)
#: what ``--accelerator`` takes where a command has it
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
#: where LightningCLI's own predict went, said in ``cnnsuite predict --help`` and the table's help
LIGHTNING_PREDICT = (
    "LightningCLI's own predict (Trainer.predict over a config's datamodule) is not a cnnsuite command: "
    "cnnsuite predict is the file predictor, and cnnsuite evaluate scores a run's test split."
)


def top_parser() -> argparse.ArgumentParser:
    """The parser whose help is the command table (it parses nothing: :func:`cnnsuite.cli.main`
    routes on the first argument)."""
    parser = argparse.ArgumentParser(
        prog="cnnsuite",
        description="cnnsuite: six CNN tasks on PyTorch Lightning. Train with a task's config, then evaluate, "
        "predict, export, inspect or serve the checkpoint it wrote.",
        epilog="cnnsuite COMMAND --help prints that command's options. Example: cnnsuite fit --config "
        "tasks/<task>/config.yaml --data.data_dir ~/my_images. " + LIGHTNING_PREDICT,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--debug", action="store_true",
        help="with any command: show the traceback of a mistake instead of one line (also CNNSUITE_DEBUG=1)",
    )  # fmt: skip
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name, command in COMMANDS.items():
        commands.add_parser(name, help=command.summary, add_help=False)
    return parser


def help_requested(argv: list[str]) -> bool | None:
    """True for ``cnnsuite --help`` (or ``-h``), False for ``cnnsuite`` alone (the table goes
    to stderr, exit 2), None when ``argv`` names a command."""
    argv = [a for a in argv if a != "--debug"]
    if not argv:
        return False
    return True if argv[0] in ("-h", "--help") else None


def print_table(asked: bool) -> None:
    """The command table, as ``cnnsuite --help`` prints it (on stdout, exit 0) or ``cnnsuite``
    alone (on stderr, exit 2)."""
    top_parser().print_help(sys.stdout if asked else sys.stderr)
    sys.exit(0 if asked else 2)


def main(argv: list[str] | None = None) -> None:
    """The ``cnnsuite`` console script. The table is printed from here, before torch or
    Lightning is imported (they take seconds); a command runs through :func:`cnnsuite.cli.main`."""
    asked = help_requested(sys.argv[1:] if argv is None else list(argv))
    if asked is not None:
        print_table(asked)
    from .cli import main as run

    # Torch, Lightning and their libraries leave about half a million long-lived objects; out of
    # the collector's sight they are no longer traversed by each full collection, nor by the ones
    # the interpreter runs at exit (more than a second on a small CPU).
    gc.freeze()
    keep_freed_memory()
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        run(argv)
    except SIGTERMException:  # a SystemExit without a code: a killed run would exit 0, and `&&` go on
        sys.exit(128 + signal.SIGTERM)


def unknown_command(name: str) -> str:
    """The message for ``cnnsuite <name>`` where ``name`` is no command."""
    close = difflib.get_close_matches(name, COMMANDS, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"unknown command {name!r}: {hint}(cnnsuite --help lists the commands: {', '.join(COMMANDS)})"


# --- the options several commands share -------------------------------------------------


class CommandParser(argparse.ArgumentParser):
    """argparse as the commands use it: a mistake is one line, without the usage block above it,
    and an option it does not know (``--inptu``) is named with the closest it does, before the
    option it stood for is said to be missing. Dotted options (``--data.data_dir``, a sweep's
    config keys) are the command's to read from what is left over."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = sorted(o[2:] for action in self._actions for o in action.option_strings if o.startswith("--"))
        for token in args:
            name = token.split("=", 1)[0]
            if name.startswith("--") and name != "--" and "." not in name and name[2:] not in known:
                close = difflib.get_close_matches(name[2:], known, n=1, cutoff=0.6)
                hint = f"did you mean --{close[0]}?" if close else f"{self.prog} --help lists them"
                self.error(f"unknown option {name}: {hint}")
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def command_parser(name: str, description: str, ckpt: str | None = "one", epilog: str | None = None):
    """The parser of ``cnnsuite <name>``: abbreviated options are refused (``--inp`` is not
    ``--input``), and ``ckpt`` is ``"one"`` (``--ckpt C``), ``"many"`` (``--ckpt A [B ...]``)
    or None (no checkpoint)."""
    parser = CommandParser(prog=f"cnnsuite {name}", description=description, epilog=epilog, allow_abbrev=False)
    if ckpt == "one":
        parser.add_argument("--ckpt", required=True, help="checkpoint written by cnnsuite fit")
    elif ckpt == "many":
        parser.add_argument("--ckpt", required=True, nargs="+", help="checkpoint(s) written by cnnsuite fit")
    elif ckpt is not None:
        raise ValueError(f"ckpt={ckpt!r}: expected 'one', 'many' or None")
    return parser


def add_out(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """``--out``: where the command writes (``help`` says what, and its default)."""
    parser.add_argument("--out", default=default, help=help)


def add_accelerator(parser: argparse.ArgumentParser) -> None:
    """``--accelerator``: where the network runs."""
    parser.add_argument(
        "--accelerator", default="auto", choices=ACCELERATORS,
        help="where the network runs: auto (a GPU when there is one; default), cpu, gpu or cuda",
    )  # fmt: skip


def add_data(parser: argparse.ArgumentParser) -> None:
    """``--data.*``: where a rebuilt checkpoint's data is and how it is loaded (the options of
    :func:`cnnsuite.trust.checkpoint.add_data_options`; parse with ``parse_known_args`` and read them
    with :func:`cnnsuite.trust.checkpoint.data_options`)."""
    from .trust.checkpoint import add_data_options

    add_data_options(parser)


# --- configs ------------------------------------------------------------------------------


def task_configs() -> list[str]:
    """Every registered task's default config (:mod:`cnnsuite.contract`: ours and a user's own
    task packages), as a path relative to the current folder where it lies under it."""
    from .contract import registered_tasks

    found = sorted(task.config.resolve() for task in registered_tasks().values())
    here = Path.cwd().resolve()
    return [str(p.relative_to(here)) if p.is_relative_to(here) else str(p) for p in found]


# --- the CLI reference --------------------------------------------------------------------

#: what the reference says of LightningCLI's commands, whose --help lists every key of a config
LIGHTNING_KEYS = """\
LightningCLI's command: `cnnsuite {name} --help` lists every key of the config (several
hundred). The ones used most:

| option | what it does |
|---|---|
| `--task NAME` | the task's own config, wherever cnnsuite is installed (`runs/` and `data/` go to the current folder) |
| `--config FILE` | a task's config (`tasks/<task>/config.yaml`, or your copy); several are merged in order |
| `--print_config` | print the whole config as it would run, and stop |
| `--seed_everything N` | the run's seed (initialisation, shuffling, augmentation; the split follows `--data.seed`) |
| `--seeds 0,1,2` | (`fit`) one run per seed, one split; each run's metric, mean ± standard deviation (`seeds.json`) |
| `--trainer.max_epochs N`, `--trainer.accelerator auto\\|cpu\\|gpu` | any setting of Lightning's `Trainer` |
| `--data.data_dir DIR` | your own data (the task README gives its layouts) instead of the embedded default |
| `--data.batch_size N`, `--data.num_workers auto\\|N` | the loaders (`auto`: cores less one, at most 8; 0 on 2) |
| `--model.KEY VALUE` | a model setting (`backbone`, `backbone_kwargs`, `backbone_weights`, ...) |
| `--ckpt_path FILE\\|last` | start from a checkpoint (`fit`: resume it exactly; `validate`/`test`: score it) |
| `--evaluate false` | (`fit`) leave out the evaluation of `best.ckpt` after training |
| `--recipe auto\\|configured` | (`fit`) on one GPU: time bf16 and channels-last, train the fastest way (`auto`) |
"""


def command_help(name: str, columns: int = 100) -> str:
    """``cnnsuite <name> --help`` of a command of the table, as printed ``columns`` wide."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)  # argparse wraps to the terminal's width
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            COMMANDS[name].run(["--help"])
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return out.getvalue()


def reference() -> str:
    """The CLI reference as Markdown: the command table, then each command's options, with
    cnnsuite's own tasks only (where a command lists the tasks)."""
    from .contract import only_built_in_tasks

    with only_built_in_tasks():
        return _reference()


def _reference() -> str:
    lines = [
        "# The `cnnsuite` command line",
        "",
        "Written by `make docs` from the command table (`src/cnnsuite/commands.py`) and each command's",
        "own `--help`; a test fails when the two differ. `cnnsuite --debug COMMAND ...` (or",
        "`CNNSUITE_DEBUG=1`) shows the traceback of a mistake instead of its one line.",
        "",
        "| command | what it does |",
        "|---|---|",
        *(f"| [`{name}`](#{name}) | {command.summary} |" for name, command in COMMANDS.items()),
    ]
    for name, command in COMMANDS.items():
        lines += ["", f"## {name}", "", command.summary[0].upper() + command.summary[1:] + ".", ""]
        if name == LIGHTNING_COMMANDS[0]:
            lines.append(LIGHTNING_KEYS.format(name=name).rstrip("\n"))
        elif command.main is None:
            first = LIGHTNING_COMMANDS[0]
            lines.append(f"LightningCLI's command, with the keys of [`{first}`](#{first}).")
        else:
            lines += ["```", command_help(name).rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
