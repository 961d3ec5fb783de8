"""cnnsuite bench, section ``recipe``: each task's training step in fp32 as configured, under
bf16 autocast, with its activations' layout flipped and compiled, on the same batch. Never a
wall-clock assertion: that each variant ran what it names, and each ratio is a finite positive
number."""

import json
import math

import pytest
import torch

from cnnsuite.bench import recipe
from cnnsuite.bench.core import BenchContext


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One tiny run of the section on a task whose module has ``channels_last`` and on the
    detector, which has none."""
    from cnnsuite.cli import main

    out = tmp_path_factory.mktemp("bench")
    main(["bench", "--out", str(out), "--tiny", "--tasks", "recognition2d", "detection2d",
          "--sections", "recipe", "--data_root", str(out / "data")])  # fmt: skip
    return json.loads((out / "bench.json").read_text())["recipe"], (out / "bench.md").read_text()


def test_each_variant_is_measured_where_the_task_has_its_setting(report):
    figures, _ = report
    for variant in ("configured", "bf16", "flipped", "bf16_flipped"):
        assert figures[f"recognition2d.train_samples_per_s_{variant}"] > 0
        ratio = figures[f"recognition2d.speed_ratio_{variant}"]
        assert math.isfinite(ratio) and ratio > 0
    assert figures["recognition2d.speed_ratio_configured"] == 1.0
    assert isinstance(figures["recognition2d.channels_last"], bool)
    # the detector's module has no channels_last: nothing to flip
    assert figures["detection2d.channels_last"] is None
    assert "detection2d.train_samples_per_s_flipped" not in figures
    assert figures["detection2d.train_samples_per_s_bf16"] > 0
    for task in ("recognition2d", "detection2d"):
        assert figures[f"{task}.fastest"] in recipe.VARIANTS
        assert figures[f"{task}.eval_speed_ratio_bf16"] > 0


def test_the_bf16_step_computes_in_bfloat16_and_close_to_fp32(report):
    """The same weights and batch give a loss that differs under autocast (bfloat16 keeps 8
    bits of mantissa: an unchanged loss would mean the variant ran fp32), by little."""
    figures, _ = report
    for task in ("recognition2d", "detection2d"):
        assert 0 < figures[f"{task}.bf16_loss_rel_diff"] < 0.05, task


def test_the_table_gives_each_task_its_ratios(report):
    _, md = report
    table = md.split("## Recipe", 1)[1]
    layout = "on" if report[0]["recognition2d.channels_last"] else "off"
    assert f"| recognition2d | {layout} |" in table and "| detection2d | — |" in table
    assert "torch.compile is not measured with --quick." in table


def test_each_variant_starts_from_the_same_weights_and_flips_only_what_it_names(tmp_path):
    """The ratios compare settings, not initialisations: every variant's model holds the same
    weights; the flipped ones train the other layout, the bf16 ones under autocast."""
    from cnnsuite.bench.core import build

    context = BenchContext(tmp_path, quick=True, machine={}, matmul_gflops=1.0, tiny=True)
    model, datamodule = build("recognition2d", tmp_path)
    layout = model.hparams.channels_last
    batch = datamodule.synthetic_batch(2, torch.Generator().manual_seed(0))
    steps = recipe.variant_steps("recognition2d", batch, context, layout=layout, compile=False)
    assert set(steps) == {"configured", "bf16", "flipped", "bf16_flipped"}
    first = dict(steps["configured"].model.named_parameters())
    for name, step in steps.items():
        flipped = name.endswith("flipped")
        assert step.model.hparams.channels_last is (flipped != layout), name
        assert (step.autocast == torch.bfloat16) is name.startswith("bf16"), name
        for key, value in step.model.named_parameters():
            assert torch.equal(value, first[key]), (name, key)
        conv = next(p for p in step.model.parameters() if p.dim() == 4 and p.shape[1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) is (flipped != layout), name
    assert set(recipe.variant_steps("recognition2d", batch, context, layout=None, compile=False)) == {
        "configured",
        "bf16",
    }


@pytest.mark.slow
def test_the_compiled_step_compiles_the_networks_its_training_step_calls(tmp_path):
    """Compiling the module's ``forward`` alone would leave a detector, which its
    ``training_step`` calls directly, uncompiled and the ratio meaningless: each network the
    module holds is compiled, and the compiled step computes the configured step's loss."""
    from torch._dynamo.utils import counters

    from cnnsuite.bench.core import build

    context = BenchContext(tmp_path, quick=True, machine={}, matmul_gflops=1.0, tiny=True)
    model, datamodule = build("recognition2d", tmp_path)
    batch = datamodule.synthetic_batch(2, torch.Generator().manual_seed(0))
    steps = recipe.variant_steps("recognition2d", batch, context, layout=model.hparams.channels_last, compile=True)
    compiled = steps["compile"]
    before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        assert float(compiled.loss()) == pytest.approx(float(steps["configured"].loss()), rel=1e-4)
    assert counters["stats"]["unique_graphs"] > before
    assert all(
        getattr(child, "_compiled_call_impl", None) is not None
        for child in compiled.model.children()
        if any(True for _ in child.parameters())
    )


def test_a_variant_whose_weights_stop_being_finite_is_flagged_and_never_the_fastest(tmp_path, monkeypatch):
    """A faster step that poisons the weights (an overflowing gradient, a faulty kernel) is
    no recipe: the section says so and picks among the others."""
    real = recipe.variant_steps

    def poisoned(*args, **kwargs):
        steps = real(*args, **kwargs)
        step = steps["bf16"]
        weight = next(step.model.parameters())

        def call() -> None:  # the fastest step there is, leaving a NaN behind
            with torch.no_grad():
                weight.view(-1)[0] = float("nan")

        steps["bf16"] = type("Poisoned", (), {"__call__": staticmethod(call), "model": step.model,
                                              "loss": step.loss, "autocast": step.autocast})()  # fmt: skip
        return steps

    monkeypatch.setattr(recipe, "variant_steps", poisoned)
    context = BenchContext(tmp_path, quick=True, machine={}, matmul_gflops=1.0, tiny=True)
    figures = recipe.measure_task("recognition2d", recipe.TINY, context)
    assert figures["finite_weights_bf16"] is False and figures["finite_weights_configured"] is True
    assert figures["speed_ratio_bf16"] > 1 and figures["fastest"] != "bf16"
    assert "(weights non-finite)" in recipe.markdown({"recognition2d": figures})


def test_a_device_without_bfloat16_is_measured_without_the_bf16_variants(tmp_path, monkeypatch):
    """A GPU before NVIDIA's Ampere has no bfloat16: autocast to it would fail the task's whole
    row. Its other variants are measured, and the table says the bf16 ones were not."""
    monkeypatch.setattr(recipe, "bf16_supported", lambda device: False)
    context = BenchContext(tmp_path, quick=True, machine={}, matmul_gflops=1.0, tiny=True)
    figures = recipe.measure_task("recognition2d", recipe.TINY, context)
    assert figures["speed_ratio_flipped"] > 0 and figures["fastest"] in ("configured", "flipped")
    assert not [key for key in figures if "bf16" in key]
    row = next(line for line in recipe.markdown({"recognition2d": figures}).splitlines() if "| recognition2d" in line)
    assert row.endswith("| — | — |")


def test_each_speed_ratio_is_the_variants_speed_over_the_configured_steps(tmp_path, monkeypatch):
    """On faked timings (seconds per step: configured 0.2, bf16 0.1, flipped 0.4, bf16 + flipped
    0.05; an eval forward 0.3 in fp32, 0.1 under bf16): samples/s is the batch over a step's
    seconds, each ratio a variant's speed over the configured one's (above 1: faster), the
    fastest the quickest step, and the eval ratio fp32's time over bf16's."""
    seconds = {"configured": 0.2, "bf16": 0.1, "flipped": 0.4, "bf16_flipped": 0.05, "fp32": 0.3}
    seconds["bf16_eval"] = 0.1

    def timings(fns, *args, **kwargs):
        eval_forward = "fp32" in fns
        return {name: {"median": seconds[f"{name}_eval" if eval_forward and name == "bf16" else name]} for name in fns}

    monkeypatch.setattr(recipe, "measure_side_by_side", timings)
    monkeypatch.setattr(recipe, "bf16_supported", lambda device: True)
    context = BenchContext(tmp_path, quick=True, machine={}, matmul_gflops=1.0, tiny=True)
    figures = recipe.measure_task("recognition2d", recipe.TINY, context)
    size = recipe.TINY.batch_size
    for variant in ("configured", "bf16", "flipped", "bf16_flipped"):
        assert figures[f"train_samples_per_s_{variant}"] == pytest.approx(size / seconds[variant]), variant
        assert figures[f"speed_ratio_{variant}"] == pytest.approx(0.2 / seconds[variant]), variant
    assert figures["fastest"] == "bf16_flipped"
    assert figures["eval_speed_ratio_bf16"] == pytest.approx(3.0)
    row = next(line for line in recipe.markdown({"recognition2d": figures}).splitlines() if "| recognition2d" in line)
    assert "| 2.00× | 0.50× | 4.00× | — | bf16_flipped |" in row
