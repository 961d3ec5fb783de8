"""A fit's recipe on its GPU (cnnsuite.training.recipe): the ways to train are timed on copies of
the model, the fastest that computes the same loss is taken, and the run trains with it. No GPU
here: the timing runs on the CPU where a test says the fit's device is one it tunes for. Never a
wall-clock assertion."""

import json

import pytest
import torch
import yaml

from cnnsuite import cli
from cnnsuite.training import recipe
from cnnsuite.training.recipe import Measured, Recipe


def measured(recipe_, ratio, loss=0.0, finite=True):
    return Measured(recipe_, 100.0 * ratio, ratio, loss, finite)


CONFIGURED = Recipe("32-true", True)
BF16 = Recipe("bf16-mixed", True)
FLIPPED = Recipe("32-true", False)
BF16_FLIPPED = Recipe("bf16-mixed", False)


def test_the_fastest_way_that_computes_the_same_loss_is_chosen():
    chosen, reason = recipe.pick([measured(CONFIGURED, 1.0), measured(BF16, 1.8), measured(FLIPPED, 1.2)])
    assert chosen == BF16 and "1.80x the configured step (32-true, channels_last)" in reason


def test_a_way_no_faster_than_the_margin_leaves_the_config_as_it_is():
    chosen, reason = recipe.pick([measured(CONFIGURED, 1.0), measured(BF16, 1.03), measured(FLIPPED, 0.9)])
    assert chosen == CONFIGURED and "the fastest: bf16-mixed, channels_last, 1.03x" in reason


def test_a_faster_way_whose_weights_blow_up_or_whose_loss_differs_is_not_chosen():
    ways = [
        measured(CONFIGURED, 1.0),
        measured(BF16, 3.0, finite=False),
        measured(BF16_FLIPPED, 2.5, loss=0.5),
        measured(FLIPPED, 1.4, loss=1e-6),
    ]
    assert recipe.pick(ways)[0] == FLIPPED
    ways[-1] = measured(FLIPPED, 1.4, loss=float("nan"))  # NaN compares false with every tolerance
    chosen, reason = recipe.pick(ways)
    assert chosen == CONFIGURED and reason == "no other way computed the same loss with finite weights"


def test_the_candidates_are_the_precisions_and_layouts_the_model_and_device_have():
    assert recipe.candidates(CONFIGURED, bf16=True) == [CONFIGURED, FLIPPED, BF16, BF16_FLIPPED]
    assert recipe.candidates(CONFIGURED, bf16=False) == [CONFIGURED, FLIPPED]
    detector = Recipe("32-true", None)  # a module without channels_last: nothing to flip
    assert recipe.candidates(detector, bf16=True) == [detector, Recipe("bf16-mixed", None)]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    """recognition2d's model, its optimiser attached as LightningCLI attaches it: made once over
    the model's own parameters, the same one returned by every ``configure_optimizers`` call."""
    from types import MethodType

    from cnnsuite.bench.core import build, make_optimizer

    model, datamodule = build("recognition2d", tmp_path_factory.mktemp("data"), data={"batch_size": 8})
    optimizer = make_optimizer("recognition2d", model.parameters())
    model.configure_optimizers = MethodType(lambda self: optimizer, model)
    return model, datamodule


def test_a_copy_steps_its_own_weights_with_an_optimiser_like_the_models(model_and_data):
    model, datamodule = model_and_data
    before = [p.detach().clone() for p in model.parameters()]
    batch = datamodule.synthetic_batch(8, torch.Generator().manual_seed(0))
    optimizer = recipe.configured_optimizer(model)
    step = recipe.ModelStep.of_copy(model, optimizer, Recipe("32-true", True), batch, torch.device("cpu"))
    step()
    assert type(step.optimizer) is type(optimizer)
    assert step.optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert any(not torch.equal(p, q) for p, q in zip(step.model.parameters(), before, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_each_way_is_timed_on_a_copy_and_the_random_state_is_left_as_it_was(model_and_data):
    model, datamodule = model_and_data
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    layout = model.hparams.channels_last
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    batch = datamodule.synthetic_batch(8, torch.Generator().manual_seed(0))
    ways = recipe.candidates(Recipe("32-true", layout), bf16=True)
    figures = recipe.time_recipes(model, batch, torch.device("cpu"), ways, warmup=1, repeats=1, min_seconds=0)
    assert torch.equal(torch.rand(3), expected)  # dropout and the like drew from a state put back
    assert [m.recipe for m in figures] == ways
    assert all(m.samples_per_s > 0 and m.finite for m in figures)
    by_way = {m.recipe: m for m in figures}
    # bfloat16 keeps 8 bits of mantissa: the bf16 step computed in it, and close to fp32
    assert 0 < by_way[Recipe("bf16-mixed", layout)].loss_rel_diff < recipe.LOSS_TOLERANCE
    assert by_way[Recipe("32-true", not layout)].loss_rel_diff < 1e-5  # the layout changes no value
    assert model.hparams.channels_last == layout
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_the_copies_are_freed_and_a_failing_step_still_puts_the_random_state_back(monkeypatch, model_and_data):
    import weakref

    model, datamodule = model_and_data
    batch = datamodule.synthetic_batch(8, torch.Generator().manual_seed(0))
    ways = [Recipe("32-true", model.hparams.channels_last)]
    copies = []
    of_copy = recipe.ModelStep.of_copy.__func__

    def watched(cls, *args):
        step = of_copy(cls, *args)
        copies.append(weakref.ref(step.model))
        return step

    monkeypatch.setattr(recipe.ModelStep, "of_copy", classmethod(watched))
    recipe.time_recipes(model, batch, torch.device("cpu"), ways, warmup=1, repeats=1, min_seconds=0)
    assert copies and all(ref() is None for ref in copies)

    def out_of_memory(self):
        torch.rand(5)  # a draw, then the failure
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(recipe.ModelStep, "__call__", out_of_memory)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    with pytest.raises(torch.OutOfMemoryError):
        recipe.time_recipes(model, batch, torch.device("cpu"), ways, warmup=1, repeats=1, min_seconds=0)
    assert torch.equal(torch.rand(3), expected)


def test_an_optimiser_like_another_keeps_its_groups_over_the_copys_parameters():
    """Two groups of other settings, a parametrised weight (what gradients reach is
    ``original``) and a weight tied between two layers: each group holds the copy's twins."""
    import copy

    from torch import nn
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, x):
            return 2 * x

    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2))
    net[1].weight = net[0].weight  # tied
    parametrize.register_parametrization(net[2], "weight", Doubled())
    groups = [{"params": list(net[0].parameters()) + [net[1].bias], "lr": 0.1},
              {"params": list(net[2].parameters()), "lr": 0.01, "weight_decay": 0.5}]  # fmt: skip
    optimizer = torch.optim.AdamW(groups)
    copied = copy.deepcopy(net)
    twins = dict(zip(map(id, net.parameters()), copied.parameters(), strict=True))
    made = recipe.optimizer_like(optimizer, net, copied)
    assert type(made) is torch.optim.AdamW
    for old, new in zip(optimizer.param_groups, made.param_groups, strict=True):
        assert all(q is twins[id(p)] for p, q in zip(old["params"], new["params"], strict=True))
        assert {k: v for k, v in new.items() if k != "params"} == {k: v for k, v in old.items() if k != "params"}
    assert made.param_groups[0]["params"][0] is copied[1].weight  # the tie holds in the copy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: what a fit on one times")
def test_on_a_cuda_device_every_way_is_timed_there_and_one_is_chosen(model_and_data):
    model, datamodule = model_and_data
    cuda = torch.device("cuda", 0)
    choice = recipe.choose(model, datamodule, cuda)
    assert choice.device == torch.cuda.get_device_name(cuda)
    assert len(choice.measured) == (4 if recipe.bf16_supported(cuda) else 2)
    assert all(m.finite and m.samples_per_s > 0 for m in choice.measured)
    assert choice.chosen in [m.recipe for m in choice.measured]
    assert all(p.device.type == "cpu" for p in model.parameters())  # the copies went, the model stayed


def test_flipping_the_layout_moves_the_weights_and_the_setting(model_and_data):
    model, _ = model_and_data
    copy_ = __import__("copy").deepcopy(model)
    # a kernel over several channels (one channel's kernel is laid out the same either way)
    convolution = next(p for p in copy_.parameters() if p.dim() == 4 and p.shape[1] > 1)
    for on in (not model.hparams.channels_last, model.hparams.channels_last):
        recipe.apply(Recipe("32-true", on), copy_)
        assert copy_.hparams.channels_last == on
        assert convolution.is_contiguous(memory_format=torch.channels_last) == on


@pytest.mark.parametrize(
    ("trainer", "count", "world", "device"),
    [
        ({"accelerator": "auto", "devices": 1}, 2, None, torch.device("cuda", 0)),
        ({"accelerator": "gpu", "devices": [1]}, 2, None, torch.device("cuda", 1)),
        ({"accelerator": "auto", "devices": "auto"}, 1, None, torch.device("cuda", 0)),
        ({"accelerator": "auto", "devices": "auto"}, 2, None, None),  # every GPU: several processes
        ({"accelerator": "cpu", "devices": 1}, 1, None, None),
        ({"accelerator": "auto", "devices": 2}, 2, None, None),
        ({"accelerator": "gpu", "devices": [0, 1]}, 2, None, None),  # a list of two: two processes
        ({"accelerator": "auto", "devices": 1, "num_nodes": 2}, 1, None, None),
        ({"accelerator": "auto", "devices": 1}, 1, "2", None),  # one of torchrun's processes
        ({"accelerator": "auto", "devices": 1, "strategy": "ddp_fork"}, 1, None, None),  # forks a process
        ({"accelerator": "auto", "devices": 1, "plugins": ["some.Precision"]}, 1, None, None),
    ],
)
def test_the_recipe_is_chosen_only_for_a_fit_of_one_process_on_one_cuda_device(
    monkeypatch, trainer, count, world, device
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if world:
        monkeypatch.setenv("WORLD_SIZE", world)
    else:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli.recipe_device(trainer) == device


def test_without_a_cuda_device_the_config_is_the_recipe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.recipe_device({"accelerator": "auto", "devices": 1}) is None


@pytest.fixture
def trainers(monkeypatch):
    """Every Trainer the CLI makes, and the fit's device said to be one it tunes for (the CPU here)."""
    made = []
    instantiate = cli.CnnSuiteCLI.instantiate_trainer

    def keep(self, **kwargs):
        made.append(instantiate(self, **kwargs))
        return made[-1]

    monkeypatch.setattr(cli.CnnSuiteCLI, "instantiate_trainer", keep)
    monkeypatch.setattr(cli, "recipe_device", lambda trainer: torch.device("cpu"))
    return made


def short_fit(tmp_path, image_folder, *extra):
    from conftest import fit

    return fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "1",
               "--trainer.limit_train_batches", "2", "--evaluate", "false", *extra)  # fmt: skip


def test_a_fit_trains_with_the_recipe_its_device_timed_fastest(monkeypatch, tmp_path, image_folder, trainers, caplog):
    """The choice reaches the Trainer (its precision) and the model (its layout, kept in the
    checkpoint's hyper-parameters), and is written down: one line, and recipe.json."""
    monkeypatch.setattr(recipe, "pick", lambda ways: (ways[-1].recipe, "the last way, for this test"))
    run = short_fit(tmp_path, image_folder)
    (trainer,) = trainers
    entries = json.loads((run / "recipe.json").read_text())
    assert len(entries) == 1 and len(entries[0]["measured"]) == 4
    chosen = entries[0]["chosen"]
    assert chosen["precision"] == "bf16-mixed" == trainer.precision
    configured = entries[0]["measured"][0]["recipe"]["channels_last"]
    assert chosen["channels_last"] is (not configured)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["channels_last"] is (not configured)
    assert "recipe on the CPU (--recipe auto): bf16-mixed" in caplog.text
    # resumed in its folder, the run goes on with the checkpoint's recipe, untimed, and says so
    monkeypatch.setattr(recipe, "time_recipes", lambda *args, **kwargs: pytest.fail("a resumed run was timed"))
    short_fit(tmp_path, image_folder, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    first, resumed = json.loads((run / "recipe.json").read_text())
    assert first == entries[0] and trainers[-1].precision == "bf16-mixed"
    assert resumed["chosen"] == chosen and resumed["measured"] == []
    assert resumed["reason"] == "kept from the checkpoint it resumes"


def test_a_resumed_run_takes_from_its_checkpoint_only_a_precision_it_would_choose(model_and_data):
    model, datamodule = model_and_data
    cpu = torch.device("cpu")
    assert recipe.kept({recipe.CHECKPOINT_KEY: {"precision": "bf16-mixed"}}, model, datamodule, cpu).chosen == Recipe(
        "bf16-mixed", model.hparams.channels_last
    )
    assert recipe.kept({recipe.CHECKPOINT_KEY: {"precision": "32-true"}}, model, datamodule, cpu).chosen.precision == (
        "32-true"
    )
    for recorded in ({}, {recipe.CHECKPOINT_KEY: {"precision": "transformer-engine"}}, {recipe.CHECKPOINT_KEY: "x"}):
        assert recipe.kept(recorded, model, datamodule, cpu) is None


def test_a_bf16_run_resumed_on_a_card_without_bfloat16_goes_on_in_fp32(monkeypatch, model_and_data):
    model, datamodule = model_and_data
    monkeypatch.setattr(recipe, "bf16_supported", lambda device: False)
    choice = recipe.kept({recipe.CHECKPOINT_KEY: {"precision": "bf16-mixed"}}, model, datamodule, torch.device("cpu"))
    assert choice.chosen.precision == "32-true" and "does not compute in" in choice.reason


def test_a_timing_that_fails_costs_the_fit_nothing(monkeypatch, tmp_path, image_folder, trainers, caplog):
    def out_of_memory(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(recipe.ModelStep, "__call__", out_of_memory)
    with pytest.warns(UserWarning, match="timing the ways to train failed .OutOfMemoryError: CUDA out of memory"):
        run = short_fit(tmp_path, image_folder)
    assert trainers[0].precision == "32-true" and (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "recipe.json").exists()


def test_a_model_that_cannot_take_its_data_is_refused_before_any_timing(monkeypatch, tmp_path, image_folder, trainers):
    from cnnsuite.errors import ConfigError

    monkeypatch.setattr(recipe, "time_recipes", lambda *args, **kwargs: pytest.fail("timed before the checks"))
    with pytest.raises(ConfigError, match="total stride"):
        short_fit(tmp_path, image_folder, "--data.image_size", "8")
    assert not trainers


@pytest.mark.parametrize(
    "extra",
    [("--recipe", "configured"), ("--trainer.precision", "32-true"), ("--trainer.deterministic", "true")],
    ids=["configured", "precision set", "deterministic"],
)
def test_a_config_that_chooses_its_recipe_is_trained_as_it_says(tmp_path, image_folder, trainers, extra):
    run = short_fit(tmp_path, image_folder, *extra)
    assert trainers[0].precision == "32-true"
    assert not (run / "recipe.json").exists()


def test_every_seed_trains_in_the_recipe_the_first_seeds_run_chose(monkeypatch, tmp_path, image_folder, trainers):
    """``--seeds``: seeds compare weights, not recipes; a choice that flips between runs near
    the margin would mix the two."""
    monkeypatch.setattr(recipe, "pick", lambda ways: (ways[-1].recipe, "the last way, for this test"))
    root = tmp_path / "runs"
    short_fit(tmp_path, image_folder, "--seeds", "0,1")
    assert (root / "version_0" / "recipe.json").is_file() and not (root / "version_1" / "recipe.json").exists()
    assert [trainer.precision for trainer in trainers] == ["bf16-mixed", "bf16-mixed"]
    layouts = [torch.load(root / f"version_{n}" / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
               ["channels_last"] for n in (0, 1)]  # fmt: skip
    assert layouts[0] == layouts[1]
    config = yaml.safe_load((root / "version_1" / "config.yaml").read_text())
    assert config["recipe"] == "configured" and config["trainer"]["precision"] == "bf16-mixed"
    # resumed with the command as the user typed it (no pinned options), the last seed goes on in its recipe
    monkeypatch.setattr(recipe, "time_recipes", lambda *args, **kwargs: pytest.fail("a resumed run was timed"))
    short_fit(tmp_path, image_folder, "--seed_everything", "1", "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert trainers[-1].precision == "bf16-mixed"


def test_a_run_that_chose_no_recipe_pins_the_next_ones_to_the_config(tmp_path):
    assert recipe.pinned(tmp_path) == ["--recipe", "configured"]
    # an entry naming a precision the module never chooses pins nothing of it
    (tmp_path / "recipe.json").write_text(json.dumps([{"chosen": {"precision": "--config", "channels_last": "x"}}]))
    assert recipe.pinned(tmp_path) == ["--recipe", "configured"]
    # a file that is not the list of starts this module writes pins nothing either, and raises nothing
    for text in ("not json", "{}", "[]", "[1]", '[{"chosen": 1}]'):
        (tmp_path / "recipe.json").write_text(text)
        assert recipe.pinned(tmp_path) == ["--recipe", "configured"]


def test_a_fit_in_bf16_true_runs_its_summary_batch_norm_and_augmentation_in_bfloat16(tmp_path, image_folder):
    """``bf16-true`` (weights in bfloat16, as Lightning's option says): the model summary's batch,
    the recomputed BatchNorm statistics' batches and the batch augmentation all meet the
    network in its dtype, as the training loop's batches do."""
    from conftest import fit

    run = fit("recognition2d", tmp_path, "--data.data_dir", str(image_folder), "--trainer.max_epochs", "1",
              "--trainer.precision", "bf16-true", "--trainer.enable_model_summary", "true")  # fmt: skip
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {v.dtype for k, v in weights.items() if k.endswith("weight")} == {torch.bfloat16}
    assert json.loads((run / "evaluation" / "metrics.json").read_text())["test/acc"] >= 0


def test_a_detector_in_half_weights_on_a_cpu_is_one_line_before_its_first_batch(capsys, tmp_path):
    """torchvision's nms and roi_align have no bfloat16 or float16 CPU kernels: a box task says
    so, naming the setting and the mixed precision that runs."""
    from cnnsuite.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--task", "localization2d", "--trainer.precision", "bf16-true", "--trainer.max_epochs", "1",
              "--data.data_root", str(tmp_path / "data"),
              "--trainer.default_root_dir", str(tmp_path / "runs")])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "trainer.precision=bf16-true: LocalizationModule's box operations have no bfloat16" in error
    assert "use bf16-mixed" in error


def test_the_next_runs_are_pinned_to_the_recipe_of_the_runs_latest_start(tmp_path):
    """A run resumed on another card appends the precision it went on in: that one is the run's."""
    starts = [
        {"chosen": {"precision": "32-true", "channels_last": False}},
        {"chosen": {"precision": "bf16-mixed", "channels_last": True}},
    ]
    (tmp_path / "recipe.json").write_text(json.dumps(starts))
    assert recipe.pinned(tmp_path) == [
        "--recipe", "configured", "--trainer.precision", "bf16-mixed", "--model.init_args.channels_last", "true",
    ]  # fmt: skip


@pytest.mark.parametrize("fails", [False, True])
def test_the_timing_runs_under_the_runs_cudnn_benchmark_and_leaves_the_setting_as_it_was(
    monkeypatch, model_and_data, fails
):
    model, datamodule = model_and_data
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seen = []

    def timed(model, batch, device, recipes, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        if fails:
            raise torch.OutOfMemoryError("out of memory")
        return [Measured(way, 100.0, 1.0, 0.0, True) for way in recipes]

    monkeypatch.setattr(recipe, "time_recipes", timed)
    if fails:
        with pytest.raises(torch.OutOfMemoryError):
            recipe.choose(model, datamodule, torch.device("cpu"), benchmark=True)
    else:
        assert recipe.choose(model, datamodule, torch.device("cpu"), benchmark=True).chosen.precision == "32-true"
    assert seen == [True] and torch.backends.cudnn.benchmark is False


def test_float16_weights_with_an_eps_float16_rounds_to_zero_are_one_line_before_the_first_step(tmp_path, image_folder):
    """``16-true`` keeps AdamW's state in float16, where its default ``eps`` (1e-8) is 0: a weight
    with no gradient turns NaN at the first step (0 / 0). The run says so before training; an
    ``eps`` float16 holds trains."""
    from conftest import fit

    from cnnsuite.errors import ConfigError

    args = ("--data.data_dir", str(image_folder), "--trainer.max_epochs", "1", "--trainer.precision", "16-true")
    with pytest.raises(ConfigError, match=r"^trainer.precision=16-true: AdamW's eps 1e-08 is 0 in float16 .*16-mixed"):
        fit("recognition2d", tmp_path / "a", *args)
    run = fit("recognition2d", tmp_path / "b", *args, "--optimizer.init_args.eps", "1e-4")
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(v.isfinite().all() for v in weights.values() if v.is_floating_point())


def test_a_run_that_chose_contiguous_pins_it_where_the_config_says_channels_last(tmp_path):
    (tmp_path / "recipe.json").write_text(json.dumps([{"chosen": {"precision": "bf16-mixed", "channels_last": False}}]))
    assert recipe.pinned(tmp_path)[-2:] == ["--model.init_args.channels_last", "false"]


def test_a_loss_is_held_relative_to_the_configured_ones_and_a_speed_as_their_ratio(monkeypatch, model_and_data):
    assert recipe.relative(2.2, 2.0) == pytest.approx(0.1) and recipe.relative(0.5, 0.0) == 0.5
    model, datamodule = model_and_data
    batch = datamodule.synthetic_batch(8, torch.Generator().manual_seed(0))
    ways = [Recipe("32-true", model.hparams.channels_last), Recipe("32-true", not model.hparams.channels_last)]
    seconds = dict(zip(ways, (0.2, 0.1), strict=True))  # the second way's step takes half the time
    monkeypatch.setattr(recipe, "measure_side_by_side", lambda steps, *args: {r: {"median": seconds[r]} for r in steps})
    figures = recipe.time_recipes(model, batch, torch.device("cpu"), ways, warmup=1, repeats=1, min_seconds=0)
    assert [m.samples_per_s for m in figures] == pytest.approx([40.0, 80.0])
    assert [m.speed_ratio for m in figures] == pytest.approx([1.0, 2.0])
