"""cnnsuite bench, section ``endtoend``: recognition2d for one epoch of two batches on both
sides (``cnnsuite fit`` + evaluation, and the plain script, each in its own process). Only
that the figures are there and the ratios finite and positive: never a wall-clock assertion."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from cnnsuite.bench import endtoend
from cnnsuite.bench.core import BenchContext, task_config
from cnnsuite.contract import registered_tasks
from cnnsuite.errors import ConfigError


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The section on recognition2d, with a convnet standing in for a reference network
    (recognition2d has none of its own) that the quick run trains within its budget."""
    context = BenchContext(tmp_path_factory.mktemp("data"), quick=True, machine={}, matmul_gflops=1.0, tiny=True)
    task = registered_tasks()["recognition2d"]
    convnet = {"convnet": {"model": {"backbone": "convnet", "backbone_kwargs": {}}}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registered_tasks(), "recognition2d", dataclasses.replace(task, references=convnet,
                                                                               quick_budget=True))  # fmt: skip
        yield endtoend.run(["recognition2d"], context)


def test_endtoend_figures_and_ratios(results):
    figures = results["recognition2d"]
    assert figures["test_metric"] == "test/acc" and figures["endtoend_epochs"] == 1
    for key in ("time_s_ours", "time_s_plain", "plain_train_s", "budget.default.steps", "budget.convnet.steps"):
        assert figures[key] > 0, key
    for key in ("test_metric_ours", "test_metric_plain", "budget.default.test_metric"):
        assert 0 <= figures[key] <= 1, key
    ratios = {k: v for k, v in figures.items() if "ratio" in k}
    assert {"train_time_ratio_vs_plain", "test_metric_ratio_vs_plain", "test_metric_ratio_vs_convnet"} <= set(ratios)
    assert all(math.isfinite(v) and v > 0 for v in ratios.values()), ratios


def test_markdown_names_goals(results):
    text = endtoend.markdown(results)
    assert "recognition2d" in text and f"time ratio ≤ {endtoend.TIME_GOAL}," in text


def test_a_headline_better_lower_is_compared_the_right_way_round(results):
    """A task of one's own may monitor an error (``mode`` min): ours scoring 0.20 against a
    reference's 0.16 is worse, where the ratio used to read 1.25 and "reached"."""
    assert endtoend.ratio(0.20, 0.16, "min") == pytest.approx(0.8) and endtoend.ratio(0.9, 0.6) == pytest.approx(1.5)
    error = {**results["recognition2d"], "test_metric": "test/mae", "test_metric_mode": "min",
             "test_metric_ours": 0.20, "test_metric_plain": 0.16, "test_metric_ratio_vs_convnet": 0.8}  # fmt: skip
    text = endtoend.markdown({"count2d": error})
    assert "metric worse than the plain script's" in text and "**not reached**" in text


def draws_at_build(monkeypatch, module, run) -> list[tuple]:
    """What Python's, NumPy's and torch's generators draw when ``run()`` reaches ``module.build``,
    in two runs after different draws: equal when ``run`` seeds every generator itself."""
    import random

    import numpy as np
    import torch

    seen = []

    def build(*args, **kwargs):
        seen.append((random.random(), np.random.rand(), torch.rand(1).item()))
        raise RuntimeError("built")

    monkeypatch.setattr(module, "build", build)
    for before in (1, 2):
        random.seed(before), np.random.seed(before), torch.manual_seed(before)
        with pytest.raises(RuntimeError, match="built"):
            run()
    return seen


def test_a_training_run_of_the_bench_seeds_every_generator_a_task_draws_from(monkeypatch, tmp_path):
    """Two runs of one configuration draw the same: Python's random too (PyTorchVideo's clip
    sampler draws from it), not only torch's, whatever was drawn before them."""
    import torch

    run = lambda: endtoend.train_within("recognition2d", {}, None, tmp_path, torch.device("cpu"))  # noqa: E731
    first, second = draws_at_build(monkeypatch, endtoend, run)
    assert first == second


def test_a_plain_script_seeds_every_generator_a_task_draws_from(monkeypatch, tmp_path):
    """The plain side of the comparison draws the same in every run of one seed, as ``cnnsuite
    fit`` does: Python's and NumPy's generators too, not only torch's."""
    import sys

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks" / "plain"))
    common = __import__("common")
    first, second = draws_at_build(monkeypatch, common, lambda: common.load("video3d", 1, tmp_path, seed=0))
    assert first == second
    sys.modules.pop("common")


def test_a_plain_script_runs_under_the_malloc_settings_of_every_cnnsuite_command(monkeypatch, tmp_path):
    """The ratio measures the suite's overhead, not glibc's page faults: the plain process keeps
    freed memory as ``cnnsuite fit`` does, before it builds anything."""
    import sys

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks" / "plain"))
    common = __import__("common")
    events = []
    monkeypatch.setattr(common, "keep_freed_memory", lambda: events.append("malloc settings"))
    monkeypatch.setattr(sys, "argv", ["plain.py", "--epochs", "1", "--out", str(tmp_path / "out.json")])
    common.main(lambda **kwargs: events.append("run") or {"test/acc": 1.0}, "a plain script")
    assert events == ["malloc settings", "run"]
    sys.modules.pop("common")


def test_end_to_end_trains_what_make_train_trains_unless_the_task_says(tmp_path):
    task = registered_tasks()["recognition2d"]
    config_epochs = task_config("recognition2d")["trainer"]["max_epochs"]
    assert endtoend.endtoend_epochs(dataclasses.replace(task, endtoend_epochs=None), endtoend.FULL) == config_epochs
    assert endtoend.endtoend_epochs(dataclasses.replace(task, endtoend_epochs=3), endtoend.FULL) == 3
    assert endtoend.endtoend_epochs(dataclasses.replace(task, quick_endtoend_epochs=2), endtoend.QUICK) == 2
    no_epochs = tmp_path / "config.yaml"
    no_epochs.write_text("trainer: {accelerator: cpu}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registered_tasks(), "recognition2d", dataclasses.replace(task, config=no_epochs))
        with pytest.raises(ConfigError, match="gives no trainer.max_epochs"):
            endtoend.endtoend_epochs(registered_tasks()["recognition2d"], endtoend.FULL)


def test_each_side_runs_in_turn_and_keeps_its_shortest_run(tmp_path, monkeypatch):
    """A full run times each side twice, ours then plain, then plain then ours, and keeps each
    side's shortest run with the metric of that run: another process taking the cores for a
    while lengthens a run and must not decide the ratio."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "recognition2d.py").write_text("")
    calls = []
    seconds = {"ours": [30.0, 20.0], "plain": [18.0, 25.0]}

    def timed(command, log, cwd=None):
        side = "ours" if "cnnsuite" in command else "plain"
        n = sum(1 for s in calls if s == side)
        calls.append(side)
        if side == "ours":
            run = Path(command[command.index("--trainer.default_root_dir") + 1])
            (run / "version_0" / "evaluation").mkdir(parents=True)
            (run / "version_0" / "evaluation" / "metrics.json").write_text(json.dumps({"test/acc": 0.9 + n / 100}))
        else:
            result = {"train_seconds": 10.0 + n, "data_seconds": 1.0, "test/acc": 0.8 + n / 100}
            Path(command[command.index("--out") + 1]).write_text(json.dumps(result))
        return seconds[side][n]

    monkeypatch.setattr(endtoend, "timed", timed)
    figures = endtoend.end_to_end("recognition2d", 1, tmp_path, None, plain, repeats=endtoend.FULL.repeats)
    assert calls == ["ours", "plain", "plain", "ours"]
    assert figures["time_s_ours_all"] == [30.0, 20.0] and figures["time_s_plain_all"] == [18.0, 25.0]
    assert figures["time_s_ours"] == 20.0 and figures["test_metric_ours"] == pytest.approx(0.91)
    assert figures["time_s_plain"] == 18.0 and figures["test_metric_plain"] == pytest.approx(0.8)
    assert figures["plain_train_s"] == 10.0 and figures["train_time_ratio_vs_plain"] == pytest.approx(20 / 18)
    assert figures["test_metric_ratio_vs_plain"] == pytest.approx(0.91 / 0.8)  # ours over plain's: above 1 is better
    assert "Each side ran 2 times" in endtoend.markdown({"recognition2d": figures | {"test_metric": "test/acc"}})
    once = figures | {"test_metric": "test/acc", "time_s_ours_all": [20.0]}
    assert "Each side ran" not in endtoend.markdown({"recognition2d": once})


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_budgets_ratio_reads_ours_over_the_reference_for_the_tasks_metric(monkeypatch, mode):
    """Ours scoring 0.20 against a reference's 0.16 is better for an accuracy, worse for an
    error (``mode`` min): the ratio reads 1.25 or 0.8, and the goal reached or not."""
    task = registered_tasks()["recognition2d"]
    convnet = {"convnet": {"model": {"backbone": "convnet", "backbone_kwargs": {}}}}
    monkeypatch.setitem(registered_tasks(), "recognition2d", dataclasses.replace(task, references=convnet))
    monkeypatch.setattr(task.module, "mode", mode)
    trained = {"default": 0.20, "convnet": 0.16}

    def train_within(task, overrides, seconds, data_root, device, epochs=-1):
        name = "convnet" if overrides else "default"
        return {"test_metric": trained[name], "steps": 4, "epochs": 1.0, "fit_s": 1.0, "train_samples": 8,
                "parameters": 1}  # fmt: skip

    monkeypatch.setattr(endtoend, "train_within", train_within)
    figures = endtoend.equal_budget("recognition2d", ("convnet",), endtoend.TINY, Path("."), None)
    expected = 1.25 if mode == "max" else 0.8
    assert figures["test_metric_ratio_vs_convnet"] == pytest.approx(expected)
    row = next(line for line in endtoend.markdown({"recognition2d": figures | {"test_metric": "test/acc"}})
               .splitlines() if "| convnet |" in line)  # fmt: skip
    assert row.endswith("| reached |" if mode == "max" else "| **not reached** |")


def test_a_task_with_nothing_to_compare_has_no_figures(tmp_path, monkeypatch):
    """A quick run of a task that declares neither quick end-to-end epochs nor a quick budget
    measures nothing: no entry in bench.json, rather than one holding only its metric's name."""
    task = registered_tasks()["recognition2d"]
    monkeypatch.setitem(registered_tasks(), "recognition2d",
                        dataclasses.replace(task, quick_endtoend_epochs=0, quick_budget=False))  # fmt: skip
    context = BenchContext(tmp_path, quick=True, machine={}, matmul_gflops=1.0)
    assert endtoend.run(["recognition2d"], context) == {}


def test_a_metric_that_is_no_number_never_reads_reached():
    """A plain script whose training diverged scores NaN: the metric ratio is NaN too, and every
    comparison with NaN is false, so "worse than the plain script's" used to go unsaid and the
    row read "reached"."""
    for ours, plain in ((0.9, math.nan), (math.nan, 0.9)):
        figures = {"endtoend_epochs": 1, "test_metric": "test/acc", "test_metric_mode": "max", "time_s_ours": 2.0,
                   "time_s_plain": 2.0, "plain_train_s": 1.0, "train_time_ratio_vs_plain": 1.0,
                   "test_metric_ours": ours, "test_metric_plain": plain}  # fmt: skip
        row = next(line for line in endtoend.markdown({"recognition2d": figures}).splitlines()
                   if line.startswith("| recognition2d | 1 |"))  # fmt: skip
        assert "not reached" in row and "no number" in row, row


@pytest.mark.parametrize("plain_device", [None, "cpu", "cuda:0"])
def test_a_plain_script_on_another_device_than_the_fit_gives_no_ratio(tmp_path, monkeypatch, plain_device):
    """On a GPU machine ``cnnsuite fit`` trains on the GPU; the plain scripts train where their
    model is, the CPU (a script that says no device trained there). Their times are no ratio:
    the row says why instead of holding one (a GPU ``make train`` against a CPU script read
    "reached" however slow the suite was)."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "recognition2d.py").write_text("")

    def timed(command, log, cwd=None):
        if "cnnsuite" in command:
            run = Path(command[command.index("--trainer.default_root_dir") + 1]) / "version_0" / "evaluation"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({"test/acc": 0.9}))
        else:
            device = {} if plain_device is None else {"device": plain_device}
            result = {"train_seconds": 1.0, "data_seconds": 1.0, "test/acc": 0.9, **device}
            Path(command[command.index("--out") + 1]).write_text(json.dumps(result))
        return 10.0

    monkeypatch.setattr(endtoend, "timed", timed)
    figures = endtoend.end_to_end("recognition2d", 1, tmp_path, None, plain, device="cuda")
    if plain_device == "cuda:0":
        assert figures["train_time_ratio_vs_plain"] == 1.0
        return
    assert "train_time_ratio_vs_plain" not in figures and "not comparable" in figures["plain"]
    assert figures["time_s_plain"] == 10.0 and figures["plain_device"] == "cpu"
    row = endtoend.markdown({"recognition2d": figures | {"test_metric": "test/acc"}}).splitlines()
    assert any(line.startswith("| recognition2d |") and "not comparable" in line for line in row)
    # on the CPU both sides train there: the ratio stands
    assert "train_time_ratio_vs_plain" in endtoend.end_to_end("recognition2d", 1, tmp_path, None, plain)


def test_a_plain_script_draws_its_batches_on_the_device_of_its_data(monkeypatch):
    """On a GPU the plain scripts hold both splits there and augment each batch there, as ``fit``
    does after its transfer: the decoded splits (tensors in lists and mappings) move whole, and
    every random draw of an augmentation is made on its batch's device ("meta" stands in for one)."""
    import sys

    import torch
    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks" / "plain"))
    common = __import__("common")
    meta = torch.device("meta")
    moved = common.to_device([torch.zeros(2), [{"boxes": torch.zeros(1, 4)}], ("a", torch.ones(1))], meta)
    assert [moved[0].device, moved[1][0]["boxes"].device, moved[2][1].device] == [meta] * 3 and moved[2][0] == "a"
    assert common.resized_crop_thetas(3, (0.6, 1.0), device=meta).device == meta
    assert common.uniform(3, -1, 1, meta).device == meta
    sys.modules.pop("common")
