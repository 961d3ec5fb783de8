"""cnnsuite bench, section ``scale``: how cost grows with the data. The growth exponent on known
numbers; the section on recognition2d cut to a few samples (each configuration measured in this
process rather than a fresh one, but for one job that checks the fresh process's figures). Only
that the figures are there, strict JSON, and the ratios finite and positive: never a wall-clock
assertion."""

import json
import math
import mmap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnsuite.bench import scale


def test_growth_exponent_on_known_numbers():
    samples = [100, 1_000, 10_000]
    assert scale.growth_exponent(samples, [3e-3 * n for n in samples]) == pytest.approx(1.0)
    assert scale.growth_exponent(samples, [5.0 * n**1.2 for n in samples]) == pytest.approx(1.2)
    assert scale.growth_exponent(samples[:2], [7.0, 7.0]) == pytest.approx(0.0)  # flat, as memory should be
    with pytest.raises(ValueError, match="two sizes"):
        scale.growth_exponent([100], [1.0])


def test_the_memory_exponent_is_the_data_parts():
    """A cache growing in step with the data is linear in it, though the imports and the model
    (900 MB here) make the whole peak look flat; a data part of 0 or less is floored, not a NaN."""
    figures = {"paths": ["cache", "files"]}
    for factor, cache_mb, files_mb in ((1, 10.0, -0.5), (10, 100.0, 0.0)):
        for path, data_mb in (("cache", cache_mb), ("files", files_mb)):
            p = f"{path}.{factor}x."
            figures |= {p + "train_samples": 12 * factor, p + "later_s_per_sample": 1e-3,
                        p + "first_s_per_sample": 2e-3, p + "peak_rss_mb": 900 + data_mb,
                        p + "data_memory_mb": data_mb}  # fmt: skip
    found = scale.exponents(figures, (1, 10))
    assert found["cache.memory_exponent"] == pytest.approx(1.0)
    # the same seconds per sample at 10× the samples: an epoch's time is linear in them
    for path in ("cache", "files"):
        assert found[f"{path}.time_exponent"] == pytest.approx(1.0)
        assert found[f"{path}.first_time_exponent"] == pytest.approx(1.0)
    assert found["files.memory_exponent"] == pytest.approx(0.0)


def test_repeated_split_grows_training_only():
    splits = {"train": ["a", "b", "c"], "val": ["v"], "test": ["t"]}
    assert scale.repeated(splits, 2) == {"train": ["a", "b", "c"] * 2, "val": ["v"], "test": ["t"]}
    assert scale.repeated(splits, 3, base=2)["train"] == ["a", "b"] * 3


def strict(text: str) -> dict:
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from cnnsuite.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scale, "in_fresh_process", scale.run_job)
        main(["bench", "--out", str(out), "--tiny", "--tasks", "recognition2d", "--sections", "scale",
              "--data_root", str(out / "data")])  # fmt: skip
    return strict((out / "bench.json").read_text()), (out / "bench.md").read_text()


def test_scale_section_keys_in_bench_json(report):
    data, _ = report
    figures = data["scale"]
    for path in ("cache", "files", "shards"):
        for factor in scale.TINY.factors:
            for key in ("first_s_per_sample", "later_s_per_sample", "peak_rss_mb", "disk_mb", "train_samples"):
                assert figures[f"recognition2d.{path}.{factor}x.{key}"] > 0, (path, factor, key)
            assert figures[f"recognition2d.{path}.{factor}x.data_memory_mb"] >= 0
        assert math.isfinite(figures[f"recognition2d.{path}.time_exponent"])
    assert figures["recognition2d.train_samples_1x"] == scale.TINY.base_samples
    # each 10× / 1× ratio is the 10× figure over the 1× one; the task's own is its default path's (cache)
    assert figures["recognition2d.default_path"] == "cache"
    for key, figure in (("time_per_sample_ratio_10x", "later_s_per_sample"), ("peak_memory_ratio_10x", "peak_rss_mb"),
                        ("peak_anon_ratio_10x", "peak_anon_mb")):  # fmt: skip
        for path in ("cache", "files", "shards"):
            p = f"recognition2d.{path}."
            assert figures[p + key] == pytest.approx(figures[p + "10x." + figure] / figures[p + "1x." + figure])
        assert figures[f"recognition2d.{key}"] == figures[f"recognition2d.cache.{key}"]
    assert figures["recognition2d.files.10x.train_samples"] == 10 * scale.TINY.base_samples
    for key in ("time_per_sample_ratio_10x", "peak_memory_ratio_10x", "throughput.shards_vs_files_ratio"):
        value = figures[f"recognition2d.{key}"]
        assert math.isfinite(value) and value > 0, key
    for side in ("files", "shards"):
        assert 0 <= figures[f"recognition2d.throughput.{side}.test_metric"] <= 1
    assert figures["recognition2d.throughput.cache_limit_mb"] > 0
    # the input's resolution doubled: the sample the loader gives has twice the side
    assert figures["recognition2d.resolution.factors"] == [1, 2]
    assert figures["recognition2d.resolution.2x.settings"] == {"data.image_size": 64}
    assert figures["recognition2d.resolution.1x.input_shape"] == [1, 32, 32]
    assert figures["recognition2d.resolution.2x.input_shape"] == [1, 64, 64]
    assert figures["recognition2d.resolution.2x.later_s_per_sample"] > 0
    assert math.isfinite(figures["recognition2d.resolution.time_exponent"])


def test_scale_section_table_in_bench_md(report):
    _, text = report
    section = text[text.index("## Cost as the data grows") :]
    assert "| recognition2d | shards | 10× |" in section and "| recognition2d | files | 1× |" in section
    assert "time_per_sample_ratio_10x" not in section  # the table says it in words
    assert "4× larger than" in section and "not supported" not in section
    assert "| recognition2d | 2× | `data.image_size` 64 | 1×64×64 |" in section


def test_a_cache_past_its_limit_is_recorded_and_shown(report, tmp_path):
    """A k× split past ``data.cache_limit_mb`` decodes every epoch on the cache path: the job
    records that its training items were not all cached, and the table says so."""
    data_root = tmp_path / "data"
    scale.build("recognition2d", data_root)[1].prepare_data()
    job = {"kind": "epochs", "task": "recognition2d", "data_root": str(data_root), "base_samples": 12,
           "batches": 1, "epochs": 1, "batch_size": 4, "data": {"cache_limit_mb": 0.1}}  # fmt: skip
    # 12 samples of 1×32×32 float32 fit in 0.1 MiB; 120 do not
    assert scale.run_job({**job, "factor": 1})["train_cached"] is True
    assert scale.run_job({**job, "factor": 10})["train_cached"] is False
    assert scale.run_job({**job, "factor": 1, "data": {"cache_limit_mb": 0}})["train_cached"] is False
    # biomedical3d keeps its volumes in MONAI's datasets: the cache says it holds them, the plain one does not
    from cnnsuite.tasks.biomedical3d.datamodule import CheckedCacheDataset
    from monai.data import Dataset

    assert scale.all_cached([CheckedCacheDataset([], lambda x: x, progress=False)]) is True
    assert scale.all_cached([Dataset([], None)]) is False and scale.all_cached([]) is None
    data, _ = report
    figures = {k.removeprefix("recognition2d."): v for k, v in data["scale"].items() if k.startswith("recognition2d.")}
    assert [figures[f"{path}.10x.cached"] for path in ("cache", "files", "shards")] == [True, False, True]
    text = scale.markdown({"recognition2d": {**figures, "cache.10x.cached": False}})
    assert "| recognition2d | cache (past its limit: decoded every epoch) | 10× |" in text
    assert "| recognition2d | cache | 1× |" in text and "| recognition2d | files | 10× |" in text


def test_a_task_that_does_not_stream_says_so(monkeypatch):
    from cnnsuite.tasks.detection2d.datamodule import DetectionDataModule

    # decoded once and kept (its default), decoded at every access, streamed from shards
    assert scale.data_paths("detection2d") == {"cache": {}, "files": {"cache_limit_mb": 0}, "shards": {}}
    # every task of the suite streams; one that does not (a user's own) has no shards path
    monkeypatch.setattr(DetectionDataModule, "streams_prepared", False)
    assert scale.data_paths("detection2d")["shards"] is None


def test_one_job_in_a_fresh_process_reports_its_own_peak_memory(tmp_path):
    job = {"kind": "epochs", "task": "recognition2d", "data_root": str(tmp_path / "data"), "data": {},
           "factor": 1, "base_samples": 8, "batches": 1, "epochs": 2, "batch_size": 4}  # fmt: skip
    scale.build("recognition2d", tmp_path / "data")[1].prepare_data()
    figures = scale.in_fresh_process(job)
    assert figures["train_samples"] == 8 and len(figures["epoch_s"]) == 2 and figures["seen"] == [4, 4]
    assert figures["peak_rss_mb"] >= figures["rss_before_data_mb"] > 0
    assert figures["peak_anon_mb"] >= figures["anon_before_data_mb"] > 0


def test_the_anonymous_peak_counts_the_heap_and_not_a_mapped_files_pages(tmp_path):
    """Reading a memory-mapped file (as a prepared folder's chunks are read) makes its pages
    resident, page cache the kernel may take back; writing as much anonymous memory (what a
    large tensor's malloc maps) is the process's own. The anonymous peak sees the second alone."""
    size = 64 * 2**20
    path = tmp_path / "chunk.bin"
    path.write_bytes(bytes(range(256)) * (size // 256))
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as pages:
        with scale.AnonymousPeak() as mapped:  # its last sample with the pages still mapped
            rss = scale.memory_mb("VmRSS")
            assert sum(pages[i] for i in range(1, size, 4096)) == size // 4096  # a byte of every page read
            mapped_rss = scale.memory_mb("VmRSS") - rss
    with scale.AnonymousPeak() as held:  # fresh anonymous pages (malloc's large blocks), each written
        own = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        for i in range(0, size, 4096):
            own[i] = 1
    own.close()
    assert mapped_rss > 48 and mapped.peak - mapped.start < 16
    assert held.peak - held.start > 48


class Allocating(torch.utils.data.Dataset):
    """In a loader worker: reads the main process's ``shared`` tensor (a decoded cache's pages,
    shared copy-on-write with the worker) and allocates ``own`` MiB of its own, held a moment."""

    def __init__(self, shared: torch.Tensor, own: int) -> None:
        self.shared, self.own = shared, own

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        held = np.ones(self.own * 2**20, dtype=np.uint8)  # every page written
        time.sleep(0.3)  # several of the peak's samples
        return int(held[::4096].sum() + self.shared[::4096].sum())


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="the loader workers are found through Linux's /proc")
def test_the_anonymous_peak_counts_the_loader_workers_own_memory_once(tmp_path):
    """Decoding in loader workers (``num_workers`` auto on more cores) costs their memory, not
    the main process's: the peak counts what a worker allocates, and not a second time the pages
    it shares with the main process (a cache decoded before the workers start)."""
    shared = torch.ones(128 * 2**20, dtype=torch.uint8)  # written: resident, then shared by the fork
    loader = torch.utils.data.DataLoader(Allocating(shared, 64), num_workers=1, multiprocessing_context="fork")
    with scale.AnonymousPeak() as peak:
        assert list(loader) == [torch.tensor(2**14 + 2**15)]
    # the worker's 64 MiB and a little of its own (the pages it copied), never the 128 shared
    assert 48 < peak.peak - peak.start < 64 + 64


def test_a_job_past_its_time_is_stopped_and_named(monkeypatch, tmp_path):
    monkeypatch.setattr(scale, "JOB_TIMEOUT_S", 0.5)  # less than the imports take
    job = {"kind": "prepare", "task": "recognition2d", "data_root": str(tmp_path), "out": str(tmp_path / "out"),
           "factor": 1, "base_samples": 4}  # fmt: skip
    with pytest.raises(RuntimeError, match="still running after 0.5 s"):
        scale.in_fresh_process(job)


def test_shards_and_files_train_under_the_same_cache_limit(monkeypatch, tmp_path):
    """Shards against files is measured on data 4× larger than ``data.cache_limit_mb``: both
    sides under that limit, or the shards keep every chunk mapped within the config's default
    limit while the files are decoded every epoch, and the ratio measures the limits."""
    jobs = []

    def fake(job):
        jobs.append(job)
        if job["kind"] == "prepare":
            return {}
        return {"train_samples": 10, "fit_s": 1.0 if "data_dir" in job["data"] else 4.0, "test_metric": 0.5}

    monkeypatch.setattr(scale, "in_fresh_process", fake)
    scale.build("recognition2d", tmp_path / "data")[1].prepare_data()
    figures = scale.throughput("recognition2d", tmp_path / "data", tmp_path, scale.TINY)
    trained = {
        "shards" if "data_dir" in job["data"] else "files": job["data"] for job in jobs if job["kind"] == "train"
    }
    limit = figures["throughput.cache_limit_mb"]
    assert trained["files"]["cache_limit_mb"] == trained["shards"]["cache_limit_mb"] == limit > 0
    assert limit == pytest.approx(figures["throughput.decoded_mb"] / 4)  # the data 4× the limit
    # samples/s over the epochs' seconds: the shards' run took a quarter of the files' time
    assert figures["throughput.files.samples_per_s"] == 10 * scale.TINY.throughput_epochs / 4.0
    assert figures["throughput.shards_vs_files_ratio"] == pytest.approx(4.0)


def test_a_jobs_figures_are_per_sample_and_the_datas_part_of_memory():
    """The first epoch costs building the dataset over every sample plus the first pass per
    sample seen; later epochs are the median of the later passes alone; the data's part of
    memory is the peak less what was resident before any data."""
    job = {"train_samples": 50, "build_s": 10.0, "epoch_s": [3.0, 2.0, 4.0, 6.0], "seen": [10, 10, 10, 10],
           "peak_rss_mb": 900.0, "rss_before_data_mb": 700.0, "peak_anon_mb": 500.0, "anon_before_data_mb": 450.0,
           "input_shape": [1, 32, 32], "train_cached": True}  # fmt: skip
    summary = scale.summarise(job, 12.5)
    assert summary["first_s_per_sample"] == pytest.approx(10.0 / 50 + 3.0 / 10)
    assert summary["later_s_per_sample"] == pytest.approx(4.0 / 10)  # the median of 0.2, 0.4, 0.6
    assert summary["data_memory_mb"] == 200.0 and summary["data_anon_mb"] == 50.0
    assert summary["peak_rss_mb"] == 900.0 and summary["disk_mb"] == 12.5 and summary["cached"] is True


def growth_figures(ratios: dict[str, float], shards_vs_files: float, same_metric: bool) -> dict:
    """A task's figures as :func:`scale.measure_task` writes them, with these 10× / 1× time ratios per path."""
    figures = {"paths": list(ratios), "factors": [1, 10], "default_path": next(iter(ratios))}
    for path, ratio in ratios.items():
        for factor in (1, 10):
            p = f"{path}.{factor}x."
            figures |= {p + "cached": True, p + "train_samples": 12 * factor, p + "first_s_per_sample": 1e-3,
                        p + "later_s_per_sample": 1e-3 * (ratio if factor == 10 else 1), p + "peak_rss_mb": 900.0,
                        p + "data_memory_mb": 1.0, p + "peak_anon_mb": 500.0, p + "data_anon_mb": 1.0,
                        p + "disk_mb": 1.0}  # fmt: skip
        figures |= {f"{path}.time_per_sample_ratio_10x": ratio, f"{path}.peak_memory_ratio_10x": 1.0,
                    f"{path}.peak_anon_ratio_10x": 1.0, f"{path}.time_exponent": 1.0,
                    f"{path}.first_time_exponent": 1.0, f"{path}.memory_exponent": 0.0}  # fmt: skip
    figures["time_per_sample_ratio_10x"] = ratios[figures["default_path"]]
    figures |= {"throughput.shards_vs_files_ratio": shards_vs_files, "throughput.test_metric": "test/acc",
                "throughput.decoded_mb": 4.0, "throughput.cache_limit_mb": 1.0, "throughput.epochs": 1,
                "throughput.files.samples_per_s": 100.0, "throughput.shards.samples_per_s": 100.0 * shards_vs_files,
                "throughput.files.test_metric": 0.5,
                "throughput.shards.test_metric": 0.5 if same_metric else 0.25}  # fmt: skip
    return figures


def test_the_goals_are_read_the_right_way_round():
    """Later-epoch time per sample at 10× more than :data:`~cnnsuite.bench.scale.GOAL_TIME_RATIO`
    times 1× misses the goal, at it or less reaches it; shards below
    :data:`~cnnsuite.bench.scale.GOAL_THROUGHPUT_RATIO` times the files' throughput miss theirs,
    and a test metric that differs between them is said to."""
    over, at = scale.GOAL_TIME_RATIO * 1.5, scale.GOAL_TIME_RATIO
    text = scale.markdown({"slow": growth_figures({"cache": over, "files": at, "shards": 0.9}, 1.5, False),
                           "fast": growth_figures({"files": 1.0}, scale.GOAL_THROUGHPUT_RATIO, True)})  # fmt: skip
    rows = {tuple(line.split(" | ")[:2]): line for line in text.splitlines() if line.endswith("reached** |")
            or line.endswith("| reached |")}  # fmt: skip
    assert rows[("| slow", "**cache**")].endswith("| **not reached** |")
    assert rows[("| slow", "files")].endswith("| reached |") and rows[("| slow", "shards")].endswith("| reached |")
    assert rows[("| fast", "**files**")].endswith("| reached |")
    assert "Shards / files: **1.50×** — **not reached**; test/acc **differs**." in text
    assert f"Shards / files: **{scale.GOAL_THROUGHPUT_RATIO:.2f}×** — reached; test/acc equal." in text
