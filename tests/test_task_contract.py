"""The task is the one unit of extension: a task made outside the repository, registered by
its own installed package, goes through every command with no change to the suite; an
unregistered one is not trusted."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_image_folder

from cnnsuite.cli import main
from cnnsuite.contract import only_built_in_tasks, registered_tasks, trusted_classes
from cnnsuite.errors import ConfigError
from cnnsuite.trust.checkpoint import CheckpointError


def copy_task(source: str, package: str, site: Path) -> Path:
    """tasks/<source> copied as the package ``package`` under ``site``, its config naming its
    own classes (``<package>.module.…``)."""
    folder = site / package
    shutil.copytree(ROOT / "tasks" / source, folder, ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    for path in [*folder.glob("*.py"), folder / "config.yaml"]:
        text = path.read_text().replace(f"cnnsuite.tasks.{source}", package)
        path.write_text(text.replace(f'name="{source}"', f'name="{package}"'))
    return folder


def register(site, package: str) -> None:
    """What ``pip install`` of a package declaring the entry point leaves on the path: its
    ``.dist-info`` with ``entry_points.txt``."""
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[cnnsuite.tasks]\n{package} = {package}:TASK\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on ``sys.path`` standing for the user's site-packages; the registry forgets
    what it found before and after."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    registered_tasks.cache_clear()
    yield folder
    registered_tasks.cache_clear()


def test_the_built_in_tasks_are_registered_and_trusted():
    """cnnsuite's own six, whatever task packages of a user's are installed beside it."""
    with only_built_in_tasks():
        tasks = registered_tasks()
    assert set(tasks) <= set(registered_tasks())
    assert sorted(tasks) == ["biomedical3d", "detection2d", "localization2d", "multispectral3d", "recognition2d",
                             "video3d"]  # fmt: skip
    for task in tasks.values():
        assert task.config.is_file() and task.headline == "test/" + task.module.monitor.split("/")[1]
        assert {task.module, task.datamodule} <= set(trusted_classes().values())


def test_a_seventh_task_from_its_own_package_goes_through_every_command(site, tmp_path, capsys):
    copy_task("recognition2d", "mytask", site)
    register(site, "mytask")
    assert "mytask" in registered_tasks()
    images = make_image_folder(tmp_path / "images", per_class=8)
    runs = tmp_path / "runs"
    main(["fit", "--config", str(site / "mytask" / "config.yaml"), "--data.data_dir", str(images),
          "--data.batch_size", "8", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(runs),
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])  # fmt: skip
    run = runs / "version_0"
    ckpt = run / "checkpoints" / "best.ckpt"
    assert json.loads((run / "evaluation" / "metrics.json").read_text())["test/acc"] >= 0
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(images), "--out", str(tmp_path / "eval")])
    assert "test/acc" in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    main(["predict", "--ckpt", str(ckpt), "--input", str(images / "dog"), "--out", str(tmp_path / "pred")])
    lines = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all(line["class"] in ("cat", "dog", "owl") for line in lines)
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "model.onnx")])
    assert json.loads((tmp_path / "model.onnx.json").read_text())["task"] == "mytask"
    main(["inspect", "--ckpt", str(ckpt), "--data.data_dir", str(images), "--out", str(tmp_path / "inspect"),
          "--max_samples", "4"])  # fmt: skip
    assert (tmp_path / "inspect" / "gradcam.png").is_file()


def test_the_cli_reference_names_only_cnnsuites_own_tasks(site):
    """docs/cli.md (``make docs``) describes cnnsuite: a user's task package installed beside it
    neither gets into it nor makes the test that compares it fail; the commands still list it."""
    from cnnsuite.commands import command_help, reference

    copy_task("recognition2d", "mytask", site)
    register(site, "mytask")
    assert "mytask" in command_help("bench")
    assert reference() == (ROOT / "docs" / "cli.md").read_text()
    assert "mytask" in registered_tasks()


def test_an_unregistered_copy_trains_but_its_checkpoint_is_refused(site, tmp_path, capsys):
    copy_task("recognition2d", "unregistered", site)  # importable, but no package declares it
    images = make_image_folder(tmp_path / "images", per_class=4)
    main(["fit", "--config", str(site / "unregistered" / "config.yaml"), "--data.data_dir", str(images),
          "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"), "--evaluate", "false",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])  # fmt: skip
    ckpt = tmp_path / "runs" / "version_0" / "checkpoints" / "best.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(images)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "names 'unregistered.module.RecognitionModule' as its TaskModule; refused" in err
    with pytest.raises(CheckpointError, match="refused, only registered tasks' classes are rebuilt"):
        main(["predict", "--ckpt", str(ckpt), "--input", str(images), "--debug"])


def test_a_resolution_key_outside_model_and_data_or_no_default_name_is_named_when_the_task_loads():
    from types import SimpleNamespace

    from cnnsuite.contract import load_task

    task = registered_tasks()["recognition2d"]
    good = SimpleNamespace(name="recognition2d", value="mine:TASK", load=lambda: task)
    assert load_task(good) is task
    bad = replace(task, resolution=("data.image_size", "image_size"))
    point = SimpleNamespace(name="recognition2d", value="mine:TASK", load=lambda: bad)
    with pytest.raises(ConfigError, match="resolution key 'image_size', expected model.<argument> or data.<argument>"):
        load_task(point)
    nameless_key = replace(task, resolution=("model.",))  # a section without its argument scales nothing
    point = SimpleNamespace(name="recognition2d", value="mine:TASK", load=lambda: nameless_key)
    with pytest.raises(ConfigError, match="resolution key 'model.', expected model.<argument>"):
        load_task(point)
    nameless = replace(task, datamodule=type("Nameless", (task.datamodule,), {"default_name": ""}))
    point = SimpleNamespace(name="recognition2d", value="mine:TASK", load=lambda: nameless)
    with pytest.raises(ConfigError, match="Nameless.default_name is empty; expected the name of the folder"):
        load_task(point)


def test_a_datamodule_without_input_extensions_is_named_when_the_task_loads():
    """The base class leaves ``input_extensions`` empty: ``predict`` then took no file of any
    folder and said "no file this model takes (expected )". A bare string (``".png"``, whose
    letters each end a name) or an ending without its dot is as unusable."""
    from types import SimpleNamespace

    from cnnsuite.contract import load_task

    task = registered_tasks()["recognition2d"]
    for value in ((), ".png", ["png"], (".png", 3), None):
        unread = replace(task, datamodule=type("Unread", (task.datamodule,), {"input_extensions": value}))
        point = SimpleNamespace(name="recognition2d", value="mine:TASK", load=lambda unread=unread: unread)
        with pytest.raises(ConfigError, match=r"Unread\.input_extensions is .*; expected the file endings predict "):
            load_task(point)
    listed = replace(task, datamodule=type("Listed", (task.datamodule,), {"input_extensions": [".png", ".nii.gz"]}))
    assert load_task(SimpleNamespace(name="recognition2d", value="mine:TASK", load=lambda: listed)) is listed


def test_the_shared_code_names_no_task():
    """src/cnnsuite loops over the task contract: no file of it names a task."""
    names = sorted(registered_tasks())
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "src" / "cnnsuite").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if any(name in line for name in names)
    ]
    assert not offenders, "\n".join(offenders)


def test_a_checkpoints_class_is_looked_up_in_its_own_task_first(monkeypatch):
    """Rebuilding a checkpoint imports its own task, not every task's libraries; a name no
    registered task's package holds is looked up among all of them, and refused."""
    from cnnsuite.tasks.recognition2d.module import RecognitionModule

    from cnnsuite import contract

    loaded = []
    load_task = contract.load_task
    monkeypatch.setattr(contract, "load_task", lambda point: loaded.append(point.name) or load_task(point))
    registered_tasks.cache_clear()
    assert contract.trusted_class("cnnsuite.tasks.recognition2d.module.RecognitionModule") is RecognitionModule
    assert loaded == ["recognition2d"]
    assert contract.trusted_class("cnnsuite.tasks.recognition2d.module.os") is None
    assert contract.trusted_class("os.system") is None
    assert sorted(set(loaded)) == sorted(registered_tasks())
    registered_tasks.cache_clear()


def test_a_model_its_checkpoints_could_not_rebuild_is_refused_before_it_trains():
    """A task's model that takes fewer arguments than its checkpoints record (here one that
    loads backbone_weights but takes no backbone_weights_meta, the record of their
    normalisation, nor its parent's other arguments) is refused with one line before it trains
    (``fit`` calls the check once the classes are built), not after, at its evaluation and at
    every later load."""
    from cnnsuite.tasks.recognition2d.module import RecognitionModule

    from cnnsuite.trust.checkpoint import check_rebuildable

    class NarrowModule(RecognitionModule):
        def __init__(self, num_classes: int = 3, backbone_weights: str | None = None) -> None:
            super().__init__(num_classes=num_classes, backbone_weights=backbone_weights)

    check_rebuildable(RecognitionModule(num_classes=3))
    with pytest.raises(ConfigError, match=r"NarrowModule does not take .*backbone_weights_meta.*, which its"):
        check_rebuildable(NarrowModule())

    # a checkpoint's networks are made on the meta device first: one that needs tensor values
    # there (an index map worked out on the default device) would train, then never load
    class ValuedModule(RecognitionModule):
        def configure_models(self) -> None:
            super().configure_models()
            self.register_buffer("order", torch.randperm(int(torch.arange(4).max()) + 1))

    found = r"ValuedModule: its networks cannot be made on the meta device, .*item\(\) cannot be called on meta"
    with pytest.raises(ConfigError, match=found):
        check_rebuildable(ValuedModule(num_classes=3))


def test_a_task_package_that_does_not_load_leaves_the_others_working(site):
    """One broken task package (an import it lacks) is left out with a warning naming it;
    every other task still works, and asking for it by name is its own error."""
    from cnnsuite.contract import task_named

    (site / "broken").mkdir()
    (site / "broken" / "__init__.py").write_text("import not_installed_anywhere\n")
    register(site, "broken")
    with pytest.warns(UserWarning, match=r"task 'broken' \(broken:TASK\) does not load: ModuleNotFoundError"):
        tasks = registered_tasks()
    assert "broken" not in tasks and "recognition2d" in tasks
    assert task_named("recognition2d") is tasks["recognition2d"]
    with pytest.raises(ConfigError, match="task 'broken' .* does not load"):
        task_named("broken")
    with pytest.raises(ConfigError, match="--task 'nope': expected one of biomedical3d, detection2d"):
        task_named("nope")


def test_make_takes_a_task_from_its_own_package(site):
    """``make train|prepare|sweep TASK=mytask`` for a task registered by a user's package, not only
    one of tasks/; a name nobody registers is still refused by make naming the tasks."""
    import os
    import subprocess

    copy_task("recognition2d", "mytask", site)
    register(site, "mytask")
    env = {**os.environ, "MAKEFLAGS": "", "PYTHONPATH": str(site)}

    def make(*argv):
        return subprocess.run(["make", "-s", "--no-print-directory", *argv], cwd=ROOT, capture_output=True, text=True,
                              env=env)  # fmt: skip

    def recipe(*argv) -> str:
        """The cnnsuite line ``make -n`` prints for the target."""
        (line,) = [line for line in make("-n", *argv).stdout.splitlines() if "/cnnsuite " in line]
        return line

    assert make("check-task", "TASK=mytask").returncode == 0
    assert "cnnsuite fit --task mytask" in recipe("train", "TASK=mytask")
    assert "prepare --task mytask " in recipe("prepare", "TASK=mytask", "OUT=o")
    assert "sweep --task mytask --space" in recipe("sweep", "TASK=mytask", "SPACE=s.yaml", "TRIALS=1")
    refused = make("check-task", "TASK=nope")
    assert refused.returncode == 2 and "unknown task 'nope'" in refused.stderr and "mytask" in refused.stderr


def test_a_task_whose_config_names_another_tasks_classes_is_one_line_not_the_other_task(site, capsys):
    """A copied config.yaml whose class paths were not renamed: ``--task copied`` would train
    recognition2d under its name; it is refused naming the key, the class and the one expected."""
    folder = copy_task("recognition2d", "copied", site)
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("class_path: copied.", "class_path: cnnsuite.tasks.recognition2d."))
    register(site, "copied")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--task", "copied", "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config) in err, err
    assert "model.class_path cnnsuite.tasks.recognition2d.module.RecognitionModule" in err
    assert "expected copied.module.RecognitionModule" in err


def test_the_bench_refuses_a_task_whose_config_names_another_tasks_classes(site):
    """``cnnsuite bench --tasks copied`` builds the task from its config as ``fit --task`` does:
    a copied config whose class paths were not renamed benched recognition2d under its name."""
    from cnnsuite.bench.core import build

    folder = copy_task("recognition2d", "copied", site)
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("class_path: copied.", "class_path: cnnsuite.tasks.recognition2d."))
    register(site, "copied")
    with pytest.raises(ConfigError, match=r"task copied: .*config\.yaml: model\.class_path cnnsuite\.tasks\."):
        build("copied")


def test_a_task_config_may_name_its_classes_where_its_package_exports_them(site, capsys):
    """``class_path: mytask.RecognitionModule`` (the class as the task's package exports it, and
    as jsonargparse writes a short class name out) names the Task's own class: trained, not
    refused for not being spelled ``mytask.module.RecognitionModule``."""
    folder = copy_task("recognition2d", "exported", site)
    config = folder / "config.yaml"
    text = config.read_text().replace("exported.module.", "exported.").replace("exported.datamodule.", "exported.")
    config.write_text(text)
    register(site, "exported")
    with pytest.raises(SystemExit) as exit_info:  # where --print_config stops
        main(["fit", "--task", "exported", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: exported.RecognitionModule" in printed and "exported.RecognitionDataModule" in printed


def test_a_registration_of_another_name_or_of_classes_outside_the_suite_is_named_when_the_task_loads():
    """An entry point whose Task declares another name (``--task`` and ``runs/<name>`` would
    disagree), that loads something else, or whose classes are no TaskModule and TaskDataModule
    (which the commands and the checkpoint rebuild drive), is refused naming it."""
    from types import SimpleNamespace

    from cnnsuite.contract import load_task

    task = registered_tasks()["recognition2d"]
    for loaded in (task, "recognition2d"):
        point = SimpleNamespace(name="digits", value="mine:TASK", load=lambda loaded=loaded: loaded)
        with pytest.raises(ConfigError, match=r"^task 'digits' \(mine:TASK\): expected a cnnsuite.contract.Task of"):
            load_task(point)
    for kind in ("module", "datamodule"):
        foreign = replace(task, **{kind: torch.nn.Module})
        point = SimpleNamespace(name="recognition2d", value="mine:TASK", load=lambda foreign=foreign: foreign)
        with pytest.raises(ConfigError, match="its module must be a TaskModule, its datamodule a TaskDataModule"):
            load_task(point)


def test_a_task_that_leaves_a_method_without_default_to_its_base_class_is_named_when_the_task_loads():
    """The methods the base classes have no default for (a model's networks, losses and metrics
    and how it describes and draws a prediction; a datamodule's default data, samples, datasets
    and how it reads and describes one raw file) are named, all at once, with the task, when it
    loads: not a bare NotImplementedError deep inside the one command that calls one, nor, for
    ``read_input``, every input of ``cnnsuite predict`` said to be unreadable."""
    from types import SimpleNamespace

    from cnnsuite.contract import load_task
    from cnnsuite.data import TaskDataModule
    from cnnsuite.training.task import TaskModule

    task = registered_tasks()["recognition2d"]
    datamodule = type(
        "Half",
        (task.datamodule,),
        {"read_input": TaskDataModule.read_input, "describe_preprocessing": TaskDataModule.describe_preprocessing},
    )
    module = type("Mute", (task.module,), {"describe_outputs": TaskModule.describe_outputs})
    half = replace(task, datamodule=datamodule, module=module)
    point = SimpleNamespace(name="recognition2d", value="mine:TASK", load=lambda: half)
    with pytest.raises(ConfigError) as caught:
        load_task(point)
    assert str(caught.value) == (
        "task 'recognition2d': Mute.describe_outputs, Half.read_input and Half.describe_preprocessing are not "
        "implemented; a task implements every method its base classes leave to it (docs/guide.md, Your own task)"
    )


def test_a_datamodule_that_sets_no_classes_or_channels_is_one_line_not_a_model_of_the_defaults(site, tmp_path, capsys):
    """``class_names`` and ``in_channels`` are set by a task's datamodule when it is constructed
    and linked into its model. One that sets neither was linked nothing (jsonargparse skips a
    link whose attribute is missing): the model kept its defaults, 10 classes, and the run
    stopped on an AttributeError once the split was decided. It is one line naming the class and
    the attribute."""
    folder = copy_task("recognition2d", "nameless", site)
    source = (folder / "datamodule.py").read_text()
    (folder / "datamodule.py").write_text(source.replace("self.use_prepared()", "self.use_prepared()\n        "
                                                         "del self.__dict__['class_names']"))  # fmt: skip
    register(site, "nameless")
    images = make_image_folder(tmp_path / "images", per_class=4)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(folder / "config.yaml"), "--data.data_dir", str(images),
              "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs")])  # fmt: skip
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "cnnsuite fit: error: nameless.datamodule.RecognitionDataModule: set no class_names when it was constructed; "
        "a task's datamodule sets class_names and in_channels in its __init__ (docs/guide.md, Your own task)"
    )
