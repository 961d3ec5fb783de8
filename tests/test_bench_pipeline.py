"""The bench's data-pipeline section, and what it made faster: decoded samples cached in memory
(the same tensors as decoding every epoch), batch-level augmentation (random per sample and per
epoch, boxes moved with their pixels; evaluation untouched, equal to ``read_input``), MONAI
augmentation on plain tensors."""

import math
from fractions import Fraction

import pytest
import torch
from cnnsuite.tasks.biomedical3d.datamodule import Biomedical3DDataModule
from cnnsuite.tasks.multispectral3d.datamodule import MultispectralDataModule
from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule
from cnnsuite.tasks.video3d.datamodule import VideoDataModule
from test_multispectral3d import make_folder as make_patch_folder
from test_video3d import SMALL, make_video_folder

from cnnsuite.bench import pipeline
from cnnsuite.bench.core import BenchContext
from cnnsuite.data.augment import BatchRandomAffine


def test_pipeline_section_on_one_task(tmp_path):
    torch.set_num_threads(1)
    context = BenchContext(tmp_path / "data", quick=True, machine={}, matmul_gflops=100.0, tiny=True)
    results = pipeline.run(["recognition2d"], context)
    figures = results["recognition2d"]
    for key in ("loader_samples_per_s", "loader_cold_samples_per_s", "consumption_samples_per_s",
                "loader_ratio_vs_consumption", "loader_cold_ratio_vs_consumption"):  # fmt: skip
        assert math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["batch_size"] == pipeline.TINY.batch_size and figures["num_workers"] == 0
    assert figures["train_samples"] == 1257  # the digit tasks' shared split
    text = pipeline.markdown(results)
    assert "| recognition2d |" in text and "Goal: every loader at least" in text


@pytest.fixture
def digits(image_folder):
    """Recognition datamodules on one folder: cached (default) and decoded every epoch."""
    made = {}
    for name, limit in (("cached", 1024), ("uncached", 0)):
        dm = RecognitionDataModule(data_dir=str(image_folder), image_size=16, batch_size=4, cache_limit_mb=limit)
        dm.setup("fit")
        made[name] = dm
    return made


def test_cached_images_are_the_decoded_ones_and_evaluation_equals_read_input(digits):
    cached, uncached = digits["cached"], digits["uncached"]
    assert cached.datasets["test"].images.cached and not uncached.datasets["test"].images.cached
    test = cached.datasets["test"]
    batch = next(iter(cached.test_dataloader()))[0]
    for index, sample_id in enumerate(test.ids):
        sample = cached.read_input(test.root / sample_id).sample
        torch.testing.assert_close(test[index][0], sample, rtol=0, atol=0)
        torch.testing.assert_close(uncached.datasets["test"][index][0], sample, rtol=0, atol=0)
        if index < len(batch):  # the loader's batch, too: no augmentation outside training
            torch.testing.assert_close(batch[index], sample, rtol=0, atol=0)


def test_training_batches_are_augmented_per_sample_and_per_epoch(digits):
    dm = digits["cached"]
    plain = dm.datasets["train"][0][0]
    batch = [torch.stack([plain] * 4), torch.zeros(4, dtype=torch.long)]  # as the loader gives it
    torch.manual_seed(0)
    first, again = dm.augment_batch(batch)[0], dm.augment_batch(batch)[0]
    for i in range(4):
        assert not torch.equal(first[i], plain)  # augmented
        assert not torch.equal(first[i], again[i])  # a new draw every epoch
        for j in range(i):
            assert not torch.equal(first[i], first[j])  # one draw per sample
    # moved, not replaced: the same brightness (pixels in [-1, 1]), give or take what left the canvas
    assert first.shape == (4, *plain.shape) and (first.mean((1, 2, 3)) - plain.mean()).abs().max() < 1.0


def test_batch_affine_is_the_identity_without_range_and_moves_content():
    images = torch.zeros(2, 1, 9, 9)
    images[:, :, 4, 4] = 1.0
    torch.testing.assert_close(BatchRandomAffine()(images), images)
    shifted = BatchRandomAffine(translate=(0.3, 0.3))(images, torch.Generator().manual_seed(1))
    peaks = [divmod(int(image.argmax()), 9) for image in shifted]
    assert all(peak != (4, 4) for peak in peaks) and peaks[0] != peaks[1]
    with pytest.raises(ValueError, match="float images"):
        BatchRandomAffine()(images.to(torch.uint8))


def test_cached_video_clips_are_the_decoded_ones(tmp_path):
    folder = make_video_folder(tmp_path / "videos", per_class=2, frames=20)
    made = []
    for limit in (1024, 0):
        dm = VideoDataModule(data_dir=str(folder), batch_size=2, cache_limit_mb=limit, **SMALL)
        dm.setup("fit")
        made.append(dm.datasets["test"])
    cached, decoded = made
    assert cached.decoded.cached and not decoded.decoded.cached
    for index in range(len(cached)):
        torch.testing.assert_close(cached[index][0], decoded[index][0], rtol=0, atol=0)
    # any start, the clip running past the end (last frame held) included
    for start in ("0", "1/3", "0.49", "1.3", "2"):
        cached.starts = decoded.starts = [(0, Fraction(start))]
        torch.testing.assert_close(cached.read(0)[0], decoded.read(0)[0], rtol=0, atol=0)


def test_cached_patches_are_the_read_ones(tmp_path):
    folder = make_patch_folder(tmp_path / "patches", per_class=3)
    made = []
    for limit in (1024, 0):
        dm = MultispectralDataModule(data_dir=str(folder), cache_limit_mb=limit)
        dm.setup("fit")
        made.append(dm)
    (cached, _), (decoded, _) = ((dm.datasets["test"], dm) for dm in made)
    assert cached.raw.cached and not decoded.raw.cached
    for index, sample_id in enumerate(cached.ids):
        sample = made[0].read_input(made[0].root / sample_id).sample
        torch.testing.assert_close(cached[index][0], sample, rtol=0, atol=0)
        torch.testing.assert_close(decoded[index][0], sample, rtol=0, atol=0)


def test_biomedical_batches_are_plain_tensors_and_still_augmented(tmp_path):
    dm = Biomedical3DDataModule(data_root=str(tmp_path / "data"), default_size=12, spatial_size=[8, 8, 8],
                                batch_size=4)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    volumes, _ = dm.augment_batch(batch)
    assert type(volumes) is torch.Tensor  # not MONAI's MetaTensor, which slowed every training step
    draws = [dm.augment_batch(batch)[0] for _ in range(4)]
    assert not all(torch.equal(draws[0], other) for other in draws[1:])


def test_the_loaders_rates_and_ratios_are_the_samples_over_the_seconds(tmp_path, monkeypatch):
    """On a fake clock (a cold pass of 4 s, then passes of 1, 4 and 2 s) and a training step of
    0.5 s (the step with the datamodule's batch augmentation): the cold rate is its samples over
    its seconds, the loader's rate the median of the passes', each pass at most ``batches``
    batches, and each ratio the loader's over the model's."""
    ticks = iter([0.0, 4.0, 10.0, 11.0, 20.0, 24.0, 30.0, 32.0])
    monkeypatch.setattr(pipeline, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: next(ticks))}))
    augmented, augment = [], RecognitionDataModule.augment_batch
    monkeypatch.setattr(RecognitionDataModule, "augment_batch", lambda dm, b: augmented.append(b) or augment(dm, b))
    monkeypatch.setattr(pipeline, "measure", lambda step, *args, **kwargs: step() or {"median": 0.5})
    settings = pipeline.Settings(batches=2, repeats=3, step_warmup=1, step_repeats=1, step_min_seconds=0.0,
                                 batch_size=4, cold_batches=2)  # fmt: skip
    context = BenchContext(tmp_path / "data", quick=True, machine={}, matmul_gflops=1.0, tiny=True)
    figures = pipeline.measure_task("recognition2d", settings, context)
    assert figures["loader_cold_samples_per_s"] == 8 / 4
    assert figures["loader_samples_per_s_all"] == [8 / 1, 8 / 4, 8 / 2]
    assert figures["loader_samples_per_s"] == 8 / 2
    assert figures["consumption_samples_per_s"] == 4 / 0.5 and figures["train_step_s"] == 0.5
    assert len(augmented) == 1  # the step timed is the one a fit runs: on the batch augmented
    assert figures["loader_ratio_vs_consumption"] == (8 / 2) / (4 / 0.5)
    assert figures["loader_cold_ratio_vs_consumption"] == (8 / 4) / (4 / 0.5)


def test_the_goal_names_the_loaders_below_it_and_only_them():
    """A loader below :data:`~cnnsuite.bench.pipeline.GOAL` times its model's consumption misses
    the goal; one at the goal or above reaches it."""

    def figures(ratio: float) -> dict:
        return {"batch_size": 4, "num_workers": 0, "loader_samples_per_s": ratio, "consumption_samples_per_s": 1.0,
                "loader_ratio_vs_consumption": ratio, "loader_cold_samples_per_s": 1.0,
                "loader_cold_ratio_vs_consumption": 1.0}  # fmt: skip

    goal = pipeline.GOAL
    text = pipeline.markdown({"slow": figures(goal * 0.75), "even": figures(goal), "fast": figures(goal * 1.5)})
    assert f"**not reached** for slow ({goal * 0.75:.2f}×): the model waits" in text
    assert "even (" not in text and "fast (" not in text
    assert "reached on every task measured." in pipeline.markdown({"fast": figures(goal * 1.5)})
