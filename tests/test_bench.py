"""cnnsuite bench: the shared core (timing, FLOPs, the report) and the ``models`` section, with
the fewest steps that still produce every figure. Never a wall-clock assertion: only that each
figure is there and each ratio is a finite positive number."""

import json
import math

import pytest
import torch

from cnnsuite.bench.core import count_flops, flatten, load_section
from cnnsuite.timing import measure

#: what the models section measures for every task
FIGURES = ("train_samples_per_s", "train_peak_memory_mb", "train_flops_per_sample", "train_utilisation_pct",
           "infer_latency_ms_eager", "infer_samples_per_s_eager", "infer_samples_per_s_onnxruntime")  # fmt: skip


def test_measure_median_of_repeats_and_calls_per_repeat():
    calls = []
    timing = measure(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(timing["all"]) == 3 and timing["number"] == 1 and len(calls) == 5
    assert timing["median"] == sorted(timing["all"])[1]
    # a call far shorter than min_seconds is repeated within each timing
    assert measure(lambda: None, warmup=1, repeats=2, min_seconds=0.01)["number"] > 1


def test_count_flops_counts_a_matmul():
    a, b = torch.ones(8, 16), torch.ones(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_flatten_and_every_section_loads(tmp_path, monkeypatch):
    """The command offers exactly ``SECTIONS``, and each ships: each loads to a module with
    ``run`` and ``markdown``. A section whose own import lacks a dependency raises that error
    rather than passing for a section "not part of this installation"."""
    import cnnsuite.bench as bench_package
    from cnnsuite.bench.core import SECTIONS

    assert flatten({"t": {"a": 1, "b_ratio": 2.0}}) == {"t.a": 1, "t.b_ratio": 2.0}
    for name in SECTIONS:
        module = load_section(name)
        assert callable(module.run) and callable(module.markdown), name
    (tmp_path / "needs_more.py").write_text("import cnnsuite_no_such_dependency\n")
    monkeypatch.setattr(bench_package, "__path__", [*bench_package.__path__, str(tmp_path)])
    with pytest.raises(ModuleNotFoundError, match="cnnsuite_no_such_dependency"):
        load_section("needs_more")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One bench run of the models section on a task with a reference and on the one whose
    Lightning overhead is measured, plus a section that is not installed."""
    from cnnsuite.cli import main

    out = tmp_path_factory.mktemp("bench")
    main(["bench", "--out", str(out), "--tiny", "--tasks", "recognition2d", "localization2d",
          "--sections", "models", "--data_root", str(out / "data")])  # fmt: skip
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def test_models_section_figures_and_ratios(report):
    data, _ = report
    assert {"cpu", "cpu_flags", "torch_threads", "torch", "matmul_gflops"} <= set(data["machine"])
    assert data["machine"]["matmul_gflops"] > 0
    assert data["settings"]["quick"] and data["settings"]["load"]["models"]["seconds"] >= 0
    models = data["models"]
    for task in ("recognition2d", "localization2d"):
        for key in FIGURES:
            assert models[f"{task}.{key}"] > 0, key
        assert f"{task}.infer_samples_per_s_compile" not in models  # no torch.compile in --quick
        assert models[f"{task}.onnx_max_abs_diff"] < 1e-3  # the ONNX file timed computes what PyTorch does
    expected = {
        "localization2d.train_throughput_ratio_vs_torchvision_resnet18",
        "localization2d.peak_memory_ratio_vs_torchvision_resnet18",
        "recognition2d.lightning_overhead_ratio",
        "recognition2d.infer_batch_speed_ratio_onnxruntime_vs_eager",
    }
    ratios = {key: value for key, value in models.items() if "ratio" in key}
    assert expected <= set(ratios)
    assert all(math.isfinite(v) and v > 0 for v in ratios.values()), ratios
    # a reference's own figures sit beside ours
    assert models["localization2d.reference.torchvision_resnet18.parameters"] > models["localization2d.parameters"]


def test_markdown_has_machine_table_then_sections(report):
    data, text = report
    assert text.index("## Machine") < text.index("## Models")
    assert "| CPU |" in text and "dense fp32 matmul" in text
    assert "| localization2d | **default** |" in text and "torchvision_resnet18" in text
    # the goal is said of the tasks that have a reference, not of recognition2d, which has none
    goal = next(line for line in text.splitlines() if line.startswith("Goal: each default model"))
    assert "localization2d" in goal and "No reference to compare: recognition2d." in goal
    assert "every task" not in goal
    # Lightning's overhead: its own table, one row for the task that measures it, the ratio of bench.json
    ratio = data["models"]["recognition2d.lightning_overhead_ratio"]
    overhead = text[text.index("Lightning's overhead:") :].split("\n\n")[1].splitlines()
    assert overhead[0].startswith("| task | batches/epoch |") and "**ratio**" in overhead[0]
    assert [row.split(" | ")[0] for row in overhead[2:]] == ["| recognition2d"]
    assert f" | {ratio:.3f} | " in overhead[2]


def test_a_failing_task_is_reported_and_the_others_measured(tmp_path, monkeypatch, capsys):
    """A long run must not lose every figure to one task's error: the others are measured and
    written, the failure is named in bench.json and bench.md, and the command exits non-zero."""
    from cnnsuite.bench import models
    from cnnsuite.cli import main

    measure_task = models.measure_task

    def broken_on_localization(task, settings, context):
        if task == "localization2d":
            raise RuntimeError("CUDA error: out of memory\nsecond line")
        return measure_task(task, settings, context)

    monkeypatch.setattr(models, "measure_task", broken_on_localization)
    with pytest.raises(SystemExit, match="models.localization2d"):
        main(["bench", "--out", str(tmp_path), "--tiny", "--tasks", "localization2d", "recognition2d",
              "--sections", "models", "--data_root", str(tmp_path / "data")])  # fmt: skip
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["settings"]["failures"] == {"models.localization2d": "RuntimeError: CUDA error: out of memory"}
    assert data["models"]["recognition2d.train_samples_per_s"] > 0
    assert "`models.localization2d`: RuntimeError" in (tmp_path / "bench.md").read_text()


def test_a_folder_of_the_users_own_is_refused_before_anything_is_measured(tmp_path, capsys, monkeypatch):
    """``--out`` naming a folder of the user's files (photos, or their own bench.md) would have
    its bench.json and bench.md replaced after minutes of measuring: one line, nothing written.
    A folder bench wrote before is written again."""
    from cnnsuite.bench import core
    from cnnsuite.cli import main

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "bench.md").write_text("my notes")
    monkeypatch.setattr(core, "machine_facts", lambda: pytest.fail("measured before --out was checked"))
    with pytest.raises(SystemExit):
        main(["bench", "--out", str(tmp_path / "photos"), "--tiny", "--sections", "models"])
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'photos'}: holds files this command did not write (bench.md)" in err
    assert (tmp_path / "photos" / "bench.md").read_text() == "my notes"
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["bench.md"]


def test_bench_json_is_strict_json_whatever_a_ratio_came_to(tmp_path):
    """A reference that scored 0 makes a ratio infinite, a diverged run a metric NaN: bench.json
    holds null there (strict JSON, which any parser reads), never ``Infinity`` or ``NaN``."""
    from cnnsuite.bench.core import write_report

    settings = {"quick": True, "tasks": ["t"], "device": "cpu", "matmul_size": 8, "load": {}}
    sections = {"endtoend": {"t.test_metric_ratio_vs_plain": math.inf, "t.test_metric_plain": math.nan,
                             "t.all": [1.0, -math.inf], "t.time_s_ours": 2.5}}  # fmt: skip
    machine = {"cpu": "x", "cpu_flags": [], "usable_cpus": 1, "logical_cpus": 1, "torch_threads": 1,
               "omp_num_threads": None, "memory_gib": 1, "gpu": None}  # fmt: skip
    write_report(tmp_path, machine, 1.0, settings, sections, {})

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    data = json.loads((tmp_path / "bench.json").read_text(), parse_constant=refuse)
    assert data["endtoend"] == {"t.test_metric_ratio_vs_plain": None, "t.test_metric_plain": None,
                                "t.all": [1.0, None], "t.time_s_ours": 2.5}  # fmt: skip
