"""cnnsuite bench: the shared core (timing, FLOPs, the report) and the ``models`` section, with
the fewest steps that still produce every figure. Never a wall-clock assertion: only that each
figure is there and each ratio is a finite positive number."""

import json
import math
from pathlib import Path

import pytest
import torch

from cnnsuite.bench.core import count_flops, flatten, load_section
from cnnsuite.timing import measure

#: a machine and settings as bench_main writes them, for tests of the report alone
MACHINE = {"cpu": "x", "cpu_flags": [], "usable_cpus": 1, "logical_cpus": 1, "torch_threads": 1,
           "omp_num_threads": None, "memory_gib": 1, "gpu": None}  # fmt: skip
SETTINGS = {"quick": True, "tasks": ["t"], "device": "cpu", "matmul_size": 8, "load": {}}

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

    sections = {"endtoend": {"t.test_metric_ratio_vs_plain": math.inf, "t.test_metric_plain": math.nan,
                             "t.all": [1.0, -math.inf], "t.time_s_ours": 2.5}}  # fmt: skip
    write_report(tmp_path, MACHINE, 1.0, SETTINGS, sections, {})

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    data = json.loads((tmp_path / "bench.json").read_text(), parse_constant=refuse)
    assert data["endtoend"] == {"t.test_metric_ratio_vs_plain": None, "t.test_metric_plain": None,
                                "t.all": [1.0, None], "t.time_s_ours": 2.5}  # fmt: skip


def test_each_ratio_is_the_quotient_of_the_figures_beside_it(report):
    """A ratio turned over, or one of the wrong figures, is still finite and positive: each
    ratio and derived figure of bench.json is recomputed from the figures written beside it
    (ours / reference; engine over eager; Lightning over the plain loop)."""
    from cnnsuite.bench.core import build

    data, _ = report
    matmul = data["machine"]["matmul_gflops"] * 1e9
    loc, rec = ({k.partition(".")[2]: v for k, v in data["models"].items() if k.startswith(f"{task}.")}
                for task in ("localization2d", "recognition2d"))  # fmt: skip
    ref = {k.removeprefix("reference.torchvision_resnet18."): v for k, v in loc.items() if k.startswith("reference.")}
    assert loc["train_throughput_ratio_vs_torchvision_resnet18"] == pytest.approx(
        loc["train_samples_per_s"] / ref["train_samples_per_s"]
    )
    assert loc["peak_memory_ratio_vs_torchvision_resnet18"] == pytest.approx(
        loc["train_peak_memory_mb"] / ref["train_peak_memory_mb"]
    )
    for f in (loc, rec, ref):
        assert f["train_samples_per_s"] == pytest.approx(loc["batch_size"] / f["train_step_s"])
        utilisation = 100 * f["train_flops_per_sample"] * f["train_samples_per_s"] / matmul
        assert f["train_utilisation_pct"] == pytest.approx(utilisation, rel=1e-2)  # matmul_gflops is rounded
    for f in (loc, rec):
        single = f["infer_single_speed_ratio_onnxruntime_vs_eager"]
        batch = f["infer_batch_speed_ratio_onnxruntime_vs_eager"]
        assert single == pytest.approx(f["infer_latency_ms_eager"] / f["infer_latency_ms_onnxruntime"])
        assert batch == pytest.approx(f["infer_samples_per_s_onnxruntime"] / f["infer_samples_per_s_eager"])
    # a training step is three forwards' work; its parameters are the model's
    assert rec["train_flops_per_sample"] == pytest.approx(3 * rec["forward_flops_per_sample"])
    assert rec["parameters"] == sum(p.numel() for p in build("recognition2d")[0].parameters())
    plain, module, lightning = rec["plain_loop_epoch_s"], rec["plain_module_loop_epoch_s"], rec["lightning_epoch_s"]
    assert rec["lightning_overhead_ratio"] == pytest.approx(lightning / plain)
    assert rec["task_module_overhead_ratio"] == pytest.approx(module / plain)
    assert rec["trainer_overhead_ratio"] == pytest.approx(lightning / module)
    assert rec["trainer_ms_per_step"] == pytest.approx(1e3 * (lightning - module) / rec["overhead_batches_per_epoch"])


def test_peak_memory_counts_the_weights_and_the_steps_highest_point():
    """On the CPU a step's peak is what the model holds plus the highest running total of its
    allocations, not the total it ends on (a freed activation still had to fit)."""
    from cnnsuite.bench.models import peak_memory_bytes

    model = torch.nn.Linear(500, 500)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    def step():
        activation = torch.ones(1_000_000)  # 4 MB, freed before the step ends
        del activation

    peak = peak_memory_bytes(step, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"))
    assert weights + 4_000_000 <= peak < weights + 5_000_000


def test_the_matmul_rate_counts_two_flops_per_multiply_add(monkeypatch):
    from cnnsuite.bench import core

    monkeypatch.setattr(core, "measure", lambda *args, **kwargs: {"median": 0.5})
    assert core.matmul_gflops("cpu", size=4, repeats=1) == pytest.approx(2 * 4**3 / 0.5 / 1e9)


def test_other_processes_cpus_is_their_cpu_time_over_the_wall_time(monkeypatch):
    """All CPU time less this process's, per second of wall time: 10 s busy, 2 of them ours,
    in 4 s are 2 CPUs kept busy by others."""
    from cnnsuite.bench import core

    clocks = {"busy": iter([100.0, 110.0]), "own": iter([5.0, 7.0]), "wall": iter([50.0, 54.0])}
    monkeypatch.setattr(core, "_busy_seconds", lambda: next(clocks["busy"]))
    monkeypatch.setattr(core, "_own_seconds", lambda: next(clocks["own"]))
    monkeypatch.setattr(core.time, "perf_counter", lambda: next(clocks["wall"]))
    load = core.CpuLoad().stop()
    assert load["seconds"] == 4.0 and load["other_processes_cpus"] == 2.0


def test_a_section_picks_the_settings_of_the_run():
    from cnnsuite.bench.core import BenchContext

    def pick(quick, tiny=False):
        return BenchContext(Path("."), quick, {}, 1.0, tiny=tiny, plain=None).pick("full", "quick", "tiny")

    assert (pick(False), pick(True), pick(True, tiny=True)) == ("full", "quick", "tiny")


def test_bench_json_keeps_each_section_measured_before_one_that_fails(tmp_path, monkeypatch):
    """A long run that fails in a later section keeps what the earlier ones measured: bench.json
    and bench.md are written after each section, each whole (a disk that fills mid-write leaves
    the previous file, not half of one)."""
    from types import SimpleNamespace

    from cnnsuite.bench import core
    from cnnsuite.cli import main

    def broken(tasks, context):
        raise RuntimeError("second section broke")

    sections = {"models": SimpleNamespace(run=lambda tasks, context: {"t": {"x_ratio": 2.0}},
                                          markdown=lambda results: "## Models\n"),
                "recipe": SimpleNamespace(run=broken, markdown=lambda results: "")}  # fmt: skip
    monkeypatch.setattr(core, "load_section", sections.get)
    monkeypatch.setattr(core, "matmul_gflops", lambda *args: 1.0)
    with pytest.raises(RuntimeError, match="second section broke"):
        main(["bench", "--out", str(tmp_path), "--tiny", "--sections", "models", "recipe"])
    assert json.loads((tmp_path / "bench.json").read_text())["models"] == {"t.x_ratio": 2.0}
    assert "## Models" in (tmp_path / "bench.md").read_text()

    written = Path.write_text

    def disk_full(path, text, *args, **kwargs):
        written(path, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        core.write_report(tmp_path, MACHINE, 1.0, SETTINGS, {"models": {"t.x_ratio": 3.0}}, {})
    monkeypatch.undo()
    assert json.loads((tmp_path / "bench.json").read_text())["models"] == {"t.x_ratio": 2.0}


def test_measure_gives_seconds_per_call_when_a_timing_spans_several(monkeypatch):
    """On a clock that a call moves by one second, a timing of at least 3 s holds 3 calls and
    each call took 1 s."""
    from cnnsuite import timing

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def call():
        clock[0] += 1.0

    assert timing.measure(call, warmup=1, repeats=2, min_seconds=3) == {"median": 1.0, "all": [1.0, 1.0], "number": 3}


def test_a_timing_waits_for_the_devices_queued_work_and_lasts_at_least_min_seconds(monkeypatch):
    """A device runs its calls after they return: ``sync`` waits for that work before every clock
    read, in the warm-up call that sizes a timing as in the timing. Calls of 1 s in timings of at
    least 2.5 s are 3 a timing, not 2; a clock too coarse to see a call move is one call a timing."""
    from cnnsuite import timing

    clock, queued = [0.0], [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def call():  # returns at once, leaving a second of work queued on the device
        queued[0] += 1.0

    def sync():
        clock[0], queued[0] = clock[0] + queued[0], 0.0

    assert timing.measure(call, warmup=1, repeats=2, min_seconds=2.5, sync=sync) == {
        "median": 1.0, "all": [1.0, 1.0], "number": 3
    }  # fmt: skip
    assert timing.measure(lambda: None, warmup=1, repeats=1, min_seconds=1.0)["number"] == 1


def test_the_goals_are_read_the_right_way_round():
    """Throughput below 1 is slower than the reference, an overhead ratio above 1.05 misses its
    goal: the report says so of the task that misses, and only of it."""
    from cnnsuite.bench.models import markdown

    def figures(ratio: float, overhead: float) -> dict:
        ours = {"parameters": 1, "train_samples_per_s": 1.0, "train_peak_memory_mb": 1.0,
                "train_flops_per_sample": 1e6, "train_utilisation_pct": 1.0}  # fmt: skip
        return {**ours, **{f"reference.ref.{k}": v for k, v in ours.items()},
                "train_throughput_ratio_vs_ref": ratio, "peak_memory_ratio_vs_ref": 1.0,
                "infer_latency_ms_eager": 1.0, "infer_samples_per_s_eager": 1.0, "infer_utilisation_pct_eager": 1.0,
                "overhead_batches_per_epoch": 2, "plain_loop_epoch_s": 1.0, "plain_module_loop_epoch_s": 1.0,
                "lightning_epoch_s": overhead, "lightning_overhead_ratio": overhead, "task_module_overhead_ratio": 1.0,
                "trainer_overhead_ratio": overhead, "trainer_ms_per_step": 1.0, "plain_ms_per_step": 1.0,
                "lightning_fit_startup_s": 1.0, "section_seconds": 1.0}  # fmt: skip

    text = markdown({"slow": figures(0.5, 1.2), "fast": figures(2.0, 1.0)})
    goal = next(line for line in text.splitlines() if line.startswith("Goal: each default model"))
    assert goal.endswith("**not reached** for slow vs ref (0.50×).")
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if "| 1.200 |" in line or "| 1.000 |" in line}
    assert rows["| slow"].endswith("| **not reached** |") and rows["| fast"].endswith("| reached |")
