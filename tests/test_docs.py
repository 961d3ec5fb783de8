"""The documentation names only what exists: every ``make`` target, ``cnnsuite`` command and
``--option`` in a README is one the Makefile and the parsers have. No document names an issue
number. A document a user reads quotes a measured figure only as ``benchmarks/results/figures.json``
holds it; the dated logs under ``benchmarks/results/`` are history, and keep the figures they had."""

import inspect
import re

import pytest
from conftest import ROOT

from cnnsuite.commands import COMMANDS

DOCS = sorted([ROOT / "README.md", ROOT / "docs" / "guide.md", *ROOT.glob("tasks/*/README.md"),
               *ROOT.glob("benchmarks/*.md"), *ROOT.glob("benchmarks/results/*.md"),
               ROOT / "data" / "README.md"])  # fmt: skip


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


def settings() -> dict[str, set[str]]:
    """The first key under each config section a user sets on the command line."""
    from lightning import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cnnsuite.contract import registered_tasks
    from cnnsuite.training.classification import ClassificationModule

    def params(cls) -> set[str]:
        return {name for cls_ in cls.__mro__ if "__init__" in vars(cls_)
                for name in inspect.signature(cls_.__init__).parameters} - {"self", "kwargs"}  # fmt: skip

    tasks = registered_tasks().values()
    return {
        "model": set().union(*(params(t.module) for t in tasks), params(ClassificationModule)),
        "data": set().union(*(set(t.datamodule.init_parameters()) for t in tasks)),
        "trainer": params(Trainer),
        "checkpoint": params(ModelCheckpoint),
    }


def commands() -> list[tuple[str, str]]:
    """``(document, command line)`` for every line of the docs' code (fenced blocks, with their
    continued lines joined, and inline spans) that runs ``make`` or ``cnnsuite``; a launcher's
    own options (``torchrun ... -m cnnsuite``) and the environment it is given
    (``OMP_NUM_THREADS=1 cnnsuite ...``) are left out."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
        lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
        lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for line in lines:
            line = line.split("-m cnnsuite", 1)[-1] if "-m cnnsuite" in line else line.strip()
            line = re.sub(r"^(?:[A-Z_]+=\S*\s+)+", "", line)  # an environment set for the command
            if re.match(r"(make|cnnsuite) ", line) or line.startswith(("fit ", "--")):
                found.append((doc.relative_to(ROOT).as_posix(), line))
    return found


def mentions(pattern: str) -> list[tuple[str, str]]:
    """``(document, match)`` for every match of ``pattern`` in the docs' command lines."""
    return [(doc, m) for doc, line in commands() for m in re.findall(pattern, line)]


def test_every_make_target_named_exists():
    targets = make_targets()
    missing = [(doc, t) for doc, t in mentions(r"^make ([a-z][\w-]*)") if t not in targets]
    assert not missing, missing


def test_every_make_variable_named_exists():
    """``make predict ... OUT=dir``: each ``NAME=`` a document gives ``make`` is a variable the
    Makefile reads (a misspelt one is ignored by make without a word)."""
    read = set(re.findall(r"\$[({]([A-Z_]+)[)}]", (ROOT / "Makefile").read_text()))
    named = [(doc, name) for doc, line in mentions(r"^make .*") for name in re.findall(r"(?<![\w-])([A-Z_]+)=", line)]
    assert not [(doc, name) for doc, name in named if name not in read]


def test_every_cnnsuite_command_named_exists():
    missing = [(doc, c) for doc, c in mentions(r"^cnnsuite ([a-z][\w-]*)") if c not in COMMANDS]
    assert not missing, missing


def test_every_option_named_exists():
    """A dotted option's first key must be a setting of some task's model or datamodule, of
    Lightning's Trainer or of the checkpoint callback (deeper keys and class-path sections such as
    the optimizer depend on the class chosen); any other option must be in the CLI reference."""
    known, reference = settings(), (ROOT / "docs" / "cli.md").read_text()
    wrong = []
    for doc, option in mentions(r"(?<![\w-])--([a-z_][\w.]*)"):
        section, _, rest = option.partition(".")
        key = rest.removeprefix("init_args.").split(".")[0]
        if section in known and rest:
            if key not in known[section]:
                wrong.append((doc, f"--{option}"))
        elif not rest and f"--{option}" not in reference:
            wrong.append((doc, f"--{option}"))
    assert not wrong, wrong


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_document_mentions_an_issue_number(doc):
    assert not re.search(r"\bissues? #?\d+", doc.read_text(), re.I), doc


def figures_module():
    """``benchmarks/figures.py``, the renderer ``make docs`` runs, loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("figures", ROOT / "benchmarks" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figures_json_is_strict_and_covers_every_task():
    figures = figures_module().load()
    tasks = sorted(p.parent.name for p in ROOT.glob("tasks/*/README.md"))
    assert sorted(figures) == tasks
    for task, entries in figures.items():
        assert entries and entries[0]["command"] == f"make train TASK={task}", task


@pytest.mark.parametrize(
    "block", figures_module().blocks(figures_module().load()), ids=lambda block: block[0].relative_to(ROOT).as_posix()
)
def test_each_generated_block_is_the_one_rendered_from_figures_json(block):
    """Each task README's figures table and README.md's hardware table are exactly what ``make
    docs`` writes from ``benchmarks/results/figures.json``, and each file has one such block."""
    figures = figures_module()
    path, content, begin, end = block
    text = path.read_text()
    assert text.count(begin) == 1 and text.count(end) == 1, path
    assert figures.render(text, content, begin, end) == text, f"run make docs ({path.relative_to(ROOT)})"


def test_a_headline_figure_quoted_in_the_manual_is_figures_jsons():
    """Where README.md or the guide quotes a task's default-run metric (``test/acc 0.97`` on a line
    naming the task), the number is the one in figures.json."""
    figures = figures_module().load()
    wrong = []
    for doc in (ROOT / "README.md", ROOT / "docs" / "guide.md"):
        for line in doc.read_text().splitlines():
            for task, entries in figures.items():
                if task not in line:
                    continue
                for key, value in entries[0]["metrics"].items():
                    for quoted in re.findall(rf"`?{re.escape(key)}`?\s*(?:=|:|of)?\s*(\d+\.\d+)", line):
                        if abs(float(quoted) - value) > 0.5 * 10 ** -len(quoted.split(".")[1]):
                            wrong.append((doc.name, task, key, quoted, value))
    assert not wrong, wrong


MEASURED = re.compile(
    r"""(?x)
      \d+\ min(?:\ \d+\ s)? | (?<![\w.])\d+(?:\.\d+)?\ ?(?:ms|s|h)\b    # a time
    | (?<![\w.])\d+(?:[.,]\d+)?\ ?(?:GB|MB|GiB|MiB)\b                 # a memory
    | (?<![\w.×])\d+\.\d+×(?!\ ?\d)                                  # a ratio
    | (?<![\w.])\d\.\d{3,}(?![\w.])                                    # a metric
    | (?<![\w.])\d+\ points?\b                                         # a metric's difference
    """
)
READ_BY_USERS = [doc for doc in DOCS if doc.parent.name != "results"]


def prose(text: str) -> str:
    """``text`` with its code blocks and the blocks ``make docs`` writes blanked, lines kept."""
    spans = [r"```.*?```", *(re.escape(begin) + ".*?" + re.escape(end) for begin, end in figures_module().MARKERS)]
    for span in spans:
        text = re.sub(span, lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return text


@pytest.mark.parametrize("doc", READ_BY_USERS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_measured_figure_outside_the_rendered_tables_is_one_figures_json_holds(doc):
    """A time, a memory, a ratio or a metric in prose (outside the blocks ``make docs`` writes and
    outside code) must be written as the rendered tables write a value of figures.json: a copy
    left behind when a measurement changes is then a failure, not a second value."""
    figures = figures_module()
    held = set()
    for _, content, _, _ in figures.blocks(figures.load()):
        held.update(MEASURED.findall(content))
    stale = []
    for number, line in enumerate(prose(doc.read_text()).splitlines(), 1):
        stale += [(number, quoted) for quoted in MEASURED.findall(line) if quoted not in held]
    assert not stale, f"{doc.relative_to(ROOT)}: put these in figures.json, or link to its table: {stale}"


def options_rows(readme) -> list[tuple[list[str], str]]:
    """``(config paths, default cell)`` of each row of a task README's "## Options" table. A
    bare key (``detector``, or ``roi_size`` after ``--model.init_args.roi_stage``) is a key of
    the section the row's first option names, ``model.init_args`` where none is named."""
    section = re.search(r"^## Options\n(.*?)(?=^## )", readme.read_text(), re.S | re.M).group(1)
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names, default = [cell.strip() for cell in line.split("|")[1:3]]
        paths, parent = [], ["model", "init_args"]
        for name in re.findall(r"`([^`]+)`", names):
            *section_keys, key = name.removeprefix("--").split(".")
            if section_keys:
                parent = section_keys + ["init_args"] * (section_keys[-1] != "init_args")
            paths.append(".".join([*parent, key]))
        rows.append((paths, default))
    return rows


#: how a default cell writes a literal value: none, true/false, a number, `word` or `[list]`
LITERAL = re.compile(r"none|true|false|-?\d+(?:\.\d+)?|`[\w./-]+`|`\[[^`]*\]`")


@pytest.mark.parametrize("readme", sorted(ROOT.glob("tasks/*/README.md")), ids=lambda p: p.parent.name)
def test_each_option_a_task_readme_tabulates_is_in_print_config_with_its_default(readme, capsys):
    """Every option of a task README's Options table is a key ``--print_config`` shows for the
    task, and where the default cell writes one literal value an option (``64, `auto```), it is
    the value ``--print_config`` shows; a described default (``16·32·64·128 channels``) is not
    compared."""
    import yaml

    from cnnsuite.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--task", readme.parent.name, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    wrong = []
    for paths, default in options_rows(readme):
        values = []
        for path in paths:
            node = config
            for key in path.split("."):
                if not isinstance(node, dict) or key not in node:
                    wrong.append((path, "not in --print_config"))
                    break
                node = node[key]
            values.append(node)
        quoted = default.split(", ")
        if len(quoted) != len(paths) or not all(LITERAL.fullmatch(q) for q in quoted):
            continue
        for path, value, written in zip(paths, values, quoted, strict=True):
            if (None if written == "none" else yaml.safe_load(written.strip("`"))) != value:
                wrong.append((path, f"README {written}, --print_config {value!r}"))
    assert not wrong, wrong
