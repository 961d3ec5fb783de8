"""cnnsuite bench knows no task by name: a task registered by its own package, outside the
repository, with no reference network and no plain script, is measured on what it has (its
config, its classes, what its ``Task`` declares)."""

import json
import math

import pytest
from test_task_contract import copy_task, register

from cnnsuite.contract import registered_tasks

#: a task declaring nothing for the bench but a short end-to-end run in --quick
MINIMAL = '''"""A task of its own."""

from cnnsuite.contract import Task

from .datamodule import RecognitionDataModule
from .module import RecognitionModule

TASK = Task(name="owntask", module=RecognitionModule, datamodule=RecognitionDataModule, quick_endtoend_epochs=1)
'''


@pytest.fixture
def own_task(tmp_path, monkeypatch):
    """``owntask``, a copy of recognition2d's classes and config as a package of its own,
    registered as ``pip install`` would (the bench's subprocesses see it too)."""
    site = tmp_path / "site"
    site.mkdir()
    (copy_task("recognition2d", "owntask", site) / "__init__.py").write_text(MINIMAL)
    register(site, "owntask")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    registered_tasks.cache_clear()
    yield "owntask"
    registered_tasks.cache_clear()


def test_a_task_from_outside_is_measured_on_what_it_has(own_task, tmp_path, monkeypatch):
    from cnnsuite.cli import main

    monkeypatch.chdir(tmp_path)  # no ./benchmarks/plain here: the plain side is not measured
    out = tmp_path / "bench"
    main(["bench", "--out", str(out), "--tiny", "--tasks", own_task, "--sections", "models", "endtoend",
          "--data_root", str(tmp_path / "data")])  # fmt: skip
    data = json.loads((out / "bench.json").read_text())
    assert data["settings"]["failures"] == {} and data["settings"]["plain"] is None
    models, endtoend = data["models"], data["endtoend"]
    assert models["owntask.train_samples_per_s"] > 0 and models["owntask.infer_samples_per_s_eager"] > 0
    assert not any("_vs_" in key and "onnxruntime" not in key for key in models)  # no reference, no overhead
    assert endtoend["owntask.test_metric"] == "test/acc" and endtoend["owntask.endtoend_epochs"] == 1
    assert endtoend["owntask.time_s_ours"] > 0 and math.isfinite(endtoend["owntask.test_metric_ours"])
    assert endtoend["owntask.plain"].startswith("not measured") and "owntask.time_s_plain" not in endtoend
    text = (out / "bench.md").read_text()
    assert "| owntask | **default** |" in text and "not measured" in text
