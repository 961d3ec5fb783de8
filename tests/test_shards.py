"""``cnnsuite prepare`` writes a task's decoded items as LitData shards; ``--data.data_dir`` of
the prepared folder streams them in training, with the split, classes and preprocessing
state of the record."""

import errno
import json
import os
import shlex
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fit, make_image_folder, task_config
from test_multispectral3d import SMALL_MODEL, make_folder

from cnnsuite.cli import main
from cnnsuite.data.shards import RECORD, StreamedItems, write_shards
from cnnsuite.errors import BadFileError, ConfigError

TINY_2D = ["--model.init_args.backbone_kwargs", "{channels: [4, 8], blocks_per_stage: 1}"]


def prepare(task, raw, out, *extra):
    main(["prepare", "--task", task, "--data.data_dir", str(raw), "--out", str(out), "--debug", *extra])


def metrics_of(run):
    return json.loads((run / "evaluation" / "metrics.json").read_text())


def fit_both(task, tmp_path, raw, out, *common):
    """The same run from the raw files and from the shards, which must score the same:
    ``(raw run, shards run)``."""
    from_raw = fit(task, tmp_path / "a", "--data.data_dir", str(raw), *common)
    from_shards = fit(task, tmp_path / "b", "--data.data_dir", str(out), *common)
    assert metrics_of(from_shards) == metrics_of(from_raw)
    return from_raw, from_shards


def evaluated_on_raw(run, raw, tmp_path) -> dict:
    """The metrics of ``run``'s best checkpoint evaluated on the raw files."""
    main(["evaluate", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--data.data_dir", str(raw),
          "--out", str(tmp_path / "on_raw"), "--debug"])  # fmt: skip
    return json.loads((tmp_path / "on_raw" / "metrics.json").read_text())


def test_recognition2d_trains_from_shards_as_from_its_raw_files(tmp_path):
    raw = make_image_folder(tmp_path / "raw", per_class=6)
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
    out = tmp_path / "prepared"
    prepare("recognition2d", raw, out, "--data.image_size", "16", "--data.augment", "false")
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before  # the user's folder is only read
    record = json.loads((out / RECORD).read_text())
    assert record["task"] == "recognition2d" and record["class_names"] == ["cat", "dog", "owl"]
    assert record["channels"] == 3 and sum(len(ids) for ids in record["splits"].values()) == 18
    assert len(record["sha256"]) == 64

    common = ["--trainer.max_epochs", "1", "--data.image_size", "16", "--data.augment", "false", *TINY_2D]
    _, from_shards = fit_both("recognition2d", tmp_path, raw, out, *common)
    ckpt = torch.load(from_shards / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["RecognitionDataModule"]["splits"] == record["splits"]

    # a checkpoint trained on shards evaluates on the raw files, and on the shards, the same way
    for data, name in ((raw, "on_raw"), (out, "on_shards")):
        main(["evaluate", "--ckpt", str(from_shards / "checkpoints" / "best.ckpt"), "--data.data_dir", str(data),
              "--data.data_root", str(tmp_path / "data"), "--out", str(tmp_path / name), "--debug"])  # fmt: skip
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["test/acc"] == metrics_of(from_shards)["test/acc"]
    # and predicts raw files from the checkpoint alone
    main(["predict", "--ckpt", str(from_shards / "checkpoints" / "best.ckpt"), "--input", str(raw / "cat"),
          "--out", str(tmp_path / "predicted"), "--debug"])  # fmt: skip
    assert len((tmp_path / "predicted" / "predictions.jsonl").read_text().splitlines()) == 6


def test_a_label_tables_class_order_travels_with_the_shards(tmp_path):
    """Class names in a label table's column order (not sorted): the record keeps that order, which
    its targets index, and a run on the prepared folder takes it."""
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    raw = make_image_folder(tmp_path / "raw", per_class=3)
    files = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.*"))
    rows = [f"{f},{int(f.startswith('owl'))},{int(f.startswith('cat'))},{int(f.startswith('dog'))}" for f in files]
    (raw / "labels.csv").write_text("image,owl,cat,dog\n" + "\n".join(rows) + "\n")
    out = tmp_path / "prepared"
    prepare("recognition2d", raw, out, "--data.image_size", "8", "--data.augment", "false")
    record = json.loads((out / RECORD).read_text())
    assert record["class_names"] == ["owl", "cat", "dog"]
    assert {record["targets"][f] for f in files if f.startswith("owl")} == {0}
    streamed = RecognitionDataModule(data_dir=str(out), data_root=str(tmp_path / "data"), image_size=8, augment=False)
    assert streamed.class_names == ["owl", "cat", "dog"]


def test_the_command_prepare_prints_trains_from_the_folder_it_wrote(tmp_path, capsys):
    """prepare ends with the fit command for its folder: with the settings it was given that
    decide what was decoded and split (the run refuses others), not the run's own batch size."""
    raw = make_image_folder(tmp_path / "raw", per_class=6)
    out = tmp_path / "prepared"
    capsys.readouterr()
    prepare("recognition2d", raw, out, "--data.image_size", "16", "--data.seed", "5", "--data.batch_size", "4")
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    command = shlex.split(printed.partition(": train with ")[2])
    assert command[:2] == ["cnnsuite", "fit"] and "--data.batch_size" not in command
    assert command[command.index("--data.image_size") + 1] == "16" and command[command.index("--data.seed") + 1] == "5"
    assert command[2:4] == ["--config", task_config("recognition2d")]  # fit below gives it, with tmp_path's folders
    fit_run = fit("recognition2d", tmp_path / "run", *command[4:], "--trainer.max_epochs", "1", *TINY_2D)
    assert metrics_of(fit_run)["test/acc"] >= 0


def test_multispectral3d_streams_its_band_statistics_and_split(tmp_path):
    raw = make_folder(tmp_path / "raw", per_class=5, size=8)
    out = tmp_path / "prepared"
    prepare("multispectral3d", raw, out)
    record = json.loads((out / RECORD).read_text())
    assert len(record["preprocessing"]["tensors"]["band_mean"]) == 13

    common = ["--trainer.max_epochs", "1", "--data.augment", "false", *SMALL_MODEL]
    _, from_shards = fit_both("multispectral3d", tmp_path, raw, out, *common)
    state = torch.load(from_shards / "checkpoints" / "last.ckpt", weights_only=True)["MultispectralDataModule"]
    assert state["band_mean"].tolist() == pytest.approx(record["preprocessing"]["tensors"]["band_mean"])

    # an edited record is a changed folder (its content hash covers it all); rehashed, its band
    # statistics are checked as a checkpoint's are, naming the folder
    from cnnsuite.tasks.multispectral3d.datamodule import MultispectralDataModule

    record["preprocessing"]["tensors"]["band_mean"] = [0.5, 0.5]
    (out / RECORD).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=rf"^{out}: content sha256 does not match .*edited, or written by another"):
        MultispectralDataModule(data_dir=str(out), data_root=str(tmp_path / "data"))
    rehashed(out)
    with pytest.raises(BadFileError, match=rf"^{out}: its record's preprocessing cannot be used: band_mean is a tensor "
                                           r"of shape \(2,\), expected 13 numbers"):  # fmt: skip
        MultispectralDataModule(data_dir=str(out), data_root=str(tmp_path / "data"))


def test_localization2d_streams_images_and_their_boxes(tmp_path):
    from test_localization2d import make_csv_folder

    raw = make_csv_folder(tmp_path / "raw", count=16)
    out = tmp_path / "prepared"
    prepare("localization2d", raw, out, "--data.image_size", "32", "--data.augment", "false")
    common = ["--trainer.max_epochs", "1", "--data.image_size", "32", "--data.augment", "false",
              "--model.backbone_kwargs", "{channels: [4, 8], blocks_per_stage: 1}",
              "--model.box_grid", "2"]  # fmt: skip
    _, from_shards = fit_both("localization2d", tmp_path, raw, out, *common)


def test_biomedical3d_streams_volumes_before_their_random_augmentation(tmp_path):
    """The shards hold each volume preprocessed (read, oriented, resized, z-scored), before the
    random flips, turns and shifts of its batch: training with augmentation gives the raw files'
    metrics, and a training volume still differs from draw to draw."""
    from cnnsuite.tasks.biomedical3d.datamodule import Biomedical3DDataModule
    from test_biomedical3d import SMALL as SMALL_3D
    from test_biomedical3d import make_volume_folder

    from cnnsuite.data.shards import StreamedItems

    raw = make_volume_folder(tmp_path / "raw", per_class=4)
    out = tmp_path / "prepared"
    prepare("biomedical3d", raw, out, "--data.spatial_size", "[16, 16, 16]")
    record = json.loads((out / RECORD).read_text())
    assert record["class_names"] == ["benign", "malignant"]
    first = record["items"]["train"][0]
    stored = StreamedItems(str(out), "train", record["items"]["train"])[0]["image"]
    raw_dm = Biomedical3DDataModule(data_dir=str(raw), spatial_size=[16, 16, 16])
    assert torch.equal(stored, raw_dm.read_input(raw / first).sample)

    streamed = Biomedical3DDataModule(data_dir=str(out), spatial_size=[16, 16, 16], data_root=str(tmp_path / "data"))
    streamed.setup("fit")
    item = streamed.datasets["train"][0]["image"]
    assert torch.equal(item, stored)  # the loader gives it as stored: the batch is augmented
    draws = [streamed.augment_batch((item[None], torch.zeros(1)))[0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # augmented at every draw

    common = ["--trainer.max_epochs", "2", "--data.batch_size", "4", *SMALL_3D]
    _, from_shards = fit_both("biomedical3d", tmp_path, raw, out, *common)
    metrics = evaluated_on_raw(from_shards, raw, tmp_path)
    assert metrics["test/acc"] == metrics_of(from_shards)["test/acc"]


def test_video3d_streams_whole_videos_and_draws_its_clips_every_epoch(tmp_path):
    """The shards hold each video decoded whole; the random clip of each epoch and its random
    crop are drawn from it as from the raw files, so the same seed gives the same metrics."""
    from cnnsuite.tasks.video3d.datamodule import VideoDataModule
    from test_video3d import make_video_folder

    raw = make_video_folder(tmp_path / "raw", per_class=4)
    out = tmp_path / "prepared"
    quarters = {"val_fraction": 0.25, "test_fraction": 0.25}
    small = ["--data.frames_per_clip", "4", "--data.frame_size", "16"]
    small += [f"--data.{k}={v}" for k, v in quarters.items()]
    prepare("video3d", raw, out, *small)
    record = json.loads((out / RECORD).read_text())
    assert record["class_names"] == ["left", "right"] and len(record["items"]["test"]) == 2

    streamed = VideoDataModule(
        data_dir=str(out), frames_per_clip=4, frame_size=16, augment=False, data_root=str(tmp_path / "data"), **quarters
    )
    streamed.setup("fit")
    assert len(streamed.datasets["test"]) == 4  # two 1-second clips of each 2-second video
    clips = [streamed.datasets["train"][0][0] for _ in range(12)]
    assert any(not torch.equal(clips[0], c) for c in clips[1:])  # a random clip of the video at every read

    common = ["--trainer.max_epochs", "2", "--data.batch_size", "4", "--data.num_workers", "0", *small,
              "--model.backbone_kwargs", "{channels: [4, 8], blocks_per_stage: 1}"]  # fmt: skip
    _, from_shards = fit_both("video3d", tmp_path, raw, out, *common)
    metrics = evaluated_on_raw(from_shards, raw, tmp_path)
    assert metrics["test/video_acc"] == metrics_of(from_shards)["test/video_acc"]


def test_a_split_cut_short_records_the_facts_of_its_own_samples(tmp_path):
    """A datamodule whose split holds fewer samples than its folder (the bench's scale section
    cuts it) records what it learnt of those samples alone, and its folder streams."""
    from cnnsuite.tasks.video3d.datamodule import VideoDataModule
    from test_video3d import make_video_folder

    from cnnsuite.data import shards

    raw = make_video_folder(tmp_path / "raw", per_class=4)
    datamodule = VideoDataModule(data_dir=str(raw), frames_per_clip=4, frame_size=16)
    datamodule.setup("fit")
    datamodule.splits = {**datamodule.splits, "train": datamodule.splits["train"][:2]}
    record = json.loads(Path(shards.prepare(datamodule, "video3d", tmp_path / "out")).read_text())
    held = {i for ids in record["splits"].values() for i in ids}
    assert set(record["sample_facts"]) == held == set(record["targets"]) and len(held) < 8
    streamed = VideoDataModule(
        data_dir=str(tmp_path / "out"), frames_per_clip=4, frame_size=16, data_root=str(tmp_path / "data")
    )
    streamed.setup("fit")
    assert len(streamed.datasets["train"]) == 2


def test_a_run_on_data_made_larger_by_repeats_records_its_split_once(tmp_path):
    """The bench makes its larger data by repeating the training samples, which the folder
    streams as items of their own; its record's split, which a run on it saves in its
    checkpoints, holds each sample once, so those checkpoints evaluate (a split with an id
    twice is refused as any split is)."""
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    from cnnsuite.bench.scale import repeated
    from cnnsuite.data import shards

    datamodule = RecognitionDataModule(data_dir=str(make_image_folder(tmp_path / "raw", per_class=4)), image_size=16)
    datamodule.setup("fit")
    train = list(datamodule.splits["train"])
    datamodule.splits = repeated(datamodule.splits, 2)
    out = tmp_path / "larger"
    record = json.loads(Path(shards.prepare(datamodule, "recognition2d", out)).read_text())
    assert record["splits"]["train"] == train and record["items"]["train"] == train * 2
    run = fit("recognition2d", tmp_path, "--data.data_dir", str(out), "--data.image_size", "16",
              "--trainer.max_epochs", "1", "--evaluate", "false")  # fmt: skip
    main(["evaluate", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--data.data_dir", str(out),
          "--data.data_root", str(tmp_path / "data"), "--out", str(tmp_path / "eval"), "--debug"])  # fmt: skip
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["test_samples"] == len(record["items"]["test"])


def test_detection2d_streams_images_with_their_targets_and_category_ids(tmp_path):
    """An item is an image with its target (boxes, labels, crowd flags, areas, image id); the
    record keeps the COCO category ids, so a run on shards writes the raw run's results file."""
    from test_detection2d import make_coco_folder

    raw = make_coco_folder(tmp_path / "raw", images=8, size=48)
    out = tmp_path / "prepared"
    prepare("detection2d", raw, out)
    assert json.loads((out / RECORD).read_text())["class_names"] == ["cat", "dog", "owl"]

    common = ["--trainer.max_epochs", "1", "--data.batch_size", "4", "--model.min_size", "48", "--model.max_size",
              "48", "--model.backbone_kwargs", "{channels: [4, 8, 16, 16], blocks_per_stage: 1}",
              "--model.fpn_channels", "32", "--model.head_convs", "1"]  # fmt: skip
    from_raw, from_shards = fit_both("detection2d", tmp_path, raw, out, *common)
    results = (from_shards / "evaluation" / "predictions.json").read_text()
    assert results == (from_raw / "evaluation" / "predictions.json").read_text()
    assert {r["category_id"] for r in json.loads(results)} <= {3, 17, 90}
    metrics = evaluated_on_raw(from_shards, raw, tmp_path)
    assert metrics["test/map"] == metrics_of(from_shards)["test/map"]

    # category ids edited (and hashed again) to fewer than the classes: writing results after
    # the training failed with an IndexError; refused where the record is read
    from cnnsuite.tasks.detection2d.datamodule import DetectionDataModule

    record = json.loads((out / RECORD).read_text())
    record["preprocessing"]["values"]["category_ids"] = [1]
    (out / RECORD).write_text(json.dumps(record))
    rehashed(out)
    with pytest.raises(BadFileError, match=r"its record's preprocessing cannot be used: category_ids is \[1\], "
                                           r"expected 3 distinct whole numbers, one a class"):  # fmt: skip
        DetectionDataModule(data_dir=str(out), data_root=str(tmp_path / "data"))


def test_a_read_in_a_random_order_decodes_its_item_alone(tmp_path, monkeypatch):
    """Training reads a split's items in the run's random order: each read decodes the item it
    asks for and no neighbours (LitData's default window decodes up to 256 a read)."""
    from litdata.streaming.serializers import BytesSerializer

    ids = [f"item_{i}" for i in range(1000)]
    write_shards(tmp_path, "train", ids, lambda i: np.full((4, 4), i, np.uint16))
    decoded = []
    deserialize = BytesSerializer.deserialize
    monkeypatch.setattr(BytesSerializer, "deserialize", lambda self, data: decoded.append(1) or deserialize(self, data))
    items = StreamedItems(str(tmp_path), "train", ids)
    order = np.random.default_rng(0).permutation(len(ids))[:200]
    for i in order:
        assert items[int(i)][0, 0] == i
    assert len(decoded) == len(order)  # the "id" field, one a decoded item


def test_an_item_streamed_where_the_record_lists_another_is_one_line_naming_both(tmp_path):
    """A record whose item order is not its shards' (a hand-made folder, hashed again) would
    pair each sample with another's target: the read says which item it found and which the
    record lists."""
    ids = [f"item_{i}" for i in range(4)]
    write_shards(tmp_path, "train", ids, lambda i: np.full((2, 2), i, np.uint16))
    assert StreamedItems(str(tmp_path), "train", ids)[1][0, 0] == 1
    with pytest.raises(ConfigError, match=r"item 1 is 'item_1', its record says item_2"):
        StreamedItems(str(tmp_path), "train", [ids[0], ids[2], ids[1], ids[3]])[1]


def test_a_local_split_keeps_its_chunks_mapped_within_cache_limit_mb(tmp_path, monkeypatch):
    """Reads in a random order over a split of many chunks: within ``mapped_mb`` each chunk
    is opened and mapped once; with LitData's four kept, nearly every read maps one again."""
    from litdata.streaming import item_loader

    from cnnsuite.data import shards
    from cnnsuite.data.shards import write

    monkeypatch.setattr(write, "CHUNK_BYTES", "16KB")
    ids = [f"item_{i}" for i in range(400)]
    write_shards(tmp_path, "train", ids, lambda i: np.full((16, 16), i, np.uint16))
    chunks = len(list((tmp_path / "train").glob("*.bin")))
    assert chunks > 2 * shards.LITDATA_MAPPED_CHUNKS
    opened = []
    open_chunk = item_loader._open_chunk_file
    monkeypatch.setattr(item_loader, "_open_chunk_file", lambda path: opened.append(path) or open_chunk(path))
    order = [int(i) for i in np.random.default_rng(0).permutation(len(ids))[:300]]
    for mapped_mb, most in ((1, chunks), (float("inf"), chunks), (0, None)):
        opened.clear()
        items = StreamedItems(str(tmp_path), "train", ids, mapped_mb)
        assert all(items[i][0, 0] == i for i in order)
        if most is not None:
            assert len(opened) == most
        else:  # the default: four kept, so most reads map a chunk again
            assert len(opened) > len(order) / 2


def test_prepare_from_inside_the_data_folder(tmp_path, monkeypatch):
    """Sample ids are paths relative to the data folder: run from inside it, they name files
    there, which LitData would store as the files' contents; they stay ids."""
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    raw = make_image_folder(tmp_path / "raw", per_class=4)
    monkeypatch.chdir(raw)
    prepare("recognition2d", ".", tmp_path / "prepared", "--data.image_size", "8")
    # shards written inside the data folder would be listed as its samples (a class folder of
    # no images): refused, nothing written there
    before = sorted(raw.rglob("*"))
    for out in ("shards", "cat/shards"):
        with pytest.raises(ConfigError, match=rf"--out {raw / out}: inside the data folder {raw}, which is only read"):
            prepare("recognition2d", ".", out, "--data.image_size", "8")
    assert sorted(raw.rglob("*")) == before
    streamed = RecognitionDataModule(data_dir=str(tmp_path / "prepared"), image_size=8)
    streamed.setup("fit")
    assert len([streamed.datasets["train"][i] for i in range(len(streamed.datasets["train"]))]) > 0


def test_a_data_root_inside_the_prepared_folder_is_refused_before_a_cache_is_written_there(tmp_path):
    """The shards' hashes are kept under data_root: a prepared folder, only read as a raw one is,
    gets no cache/ folder of the suite's (a copy of it, to a bucket say, would carry it along)."""
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    prepare("recognition2d", make_image_folder(tmp_path / "raw", per_class=4), tmp_path / "prepared",
            "--data.image_size", "8", "--data.data_root", str(tmp_path / "data"))  # fmt: skip
    before = sorted((tmp_path / "prepared").rglob("*"))
    for root in ("prepared", "prepared/sub"):
        with pytest.raises(ConfigError, match=rf"--data.data_root {tmp_path / root}: inside the prepared folder"):
            RecognitionDataModule(data_dir=str(tmp_path / "prepared"), data_root=str(tmp_path / root), image_size=8)
    assert sorted((tmp_path / "prepared").rglob("*")) == before


def test_prepared_folders_that_cannot_be_used_are_one_line(tmp_path, capsys):
    raw = make_image_folder(tmp_path / "raw", per_class=4)
    out = tmp_path / "prepared"
    prepare("recognition2d", raw, out, "--data.image_size", "8")

    capsys.readouterr()
    with pytest.raises(SystemExit):  # prepare refuses a non-empty --out
        main(["prepare", "--task", "recognition2d", "--data.data_dir", str(raw), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "not empty" in err

    from cnnsuite.tasks.multispectral3d.datamodule import MultispectralDataModule
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    # every task of the suite streams; one that does not declare it (a user's own) is refused in one line
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RecognitionDataModule, "streams_prepared", False)
        with pytest.raises(ConfigError, match=r"recognition2d does not stream a prepared folder"):
            RecognitionDataModule(data_dir=str(out))
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(["prepare", "--task", "recognition2d", "--data.data_dir", str(raw), "--out", str(tmp_path / "v")])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "recognition2d does not stream a prepared folder" in err
        assert not (tmp_path / "v").exists()

    with pytest.raises(ConfigError, match="recognition2d"):  # another task's
        MultispectralDataModule(data_dir=str(out))
    with pytest.raises(ConfigError, match="image_size"):  # decoded with other settings
        RecognitionDataModule(data_dir=str(out), image_size=16)

    shard = next((out / "train").glob("*.bin"))
    damaged = bytearray(shard.read_bytes())
    damaged[-1] ^= 1
    shard.write_bytes(bytes(damaged))
    with pytest.raises(ConfigError, match="sha256") as err:
        RecognitionDataModule(data_dir=str(out), image_size=8, data_root=str(tmp_path / "data"))
    assert str(out) in str(err.value) and "\n" not in str(err.value)

    # a label edited in the record (the shards as written) is a changed folder
    shard.write_bytes(bytes(damaged[:-1] + bytes([damaged[-1] ^ 1])))
    record_path = out / "cnnsuite-prepared.json"
    record = json.loads(record_path.read_text())
    first = next(iter(record["targets"]))
    record["targets"][first] = (record["targets"][first] + 1) % 3
    record_path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"content sha256 does not match .*\(edited, or written by another version\)"):
        RecognitionDataModule(data_dir=str(out), image_size=8, data_root=str(tmp_path / "data"))

    # a hand-made record naming a file outside the folder: refused before anything is opened
    record_path = out / "cnnsuite-prepared.json"
    record = json.loads(record_path.read_text())
    record["files"] = {"../outside.bin": "0" * 64, **record["files"]}
    record_path.write_text(json.dumps(record))
    (tmp_path / "outside.bin").write_bytes(b"secret")
    with pytest.raises(ConfigError, match=r"shard '\.\./outside\.bin' is not a file inside the prepared folder"):
        RecognitionDataModule(data_dir=str(out), image_size=8, data_root=str(tmp_path / "data"))


@pytest.mark.parametrize("out_was", ["missing", "empty"])
@pytest.mark.parametrize(
    "failure", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()], ids=["disk-full", "ctrl-c"]
)
def test_prepare_stopped_midway_keeps_nothing_it_wrote(tmp_path, monkeypatch, capsys, out_was, failure):
    """A disk that fills up (one line naming ``--out``) or a Ctrl-C in the middle of the
    shards leaves ``--out`` as it was, so running prepare again after freeing space just works
    (a half-written folder would be refused as not empty)."""
    from litdata.streaming.writer import BinaryWriter

    raw = make_image_folder(tmp_path / "raw", per_class=4)
    out = tmp_path / "prepared"
    if out_was == "empty":
        out.mkdir()
    write = BinaryWriter.write_chunk_to_file

    def fills_the_disk_at_val(self, raw_data, filename, compress=None):
        if Path(self._cache_dir).name == "val":  # the train split is written by then
            Path(self._cache_dir, filename).write_bytes(raw_data[: len(raw_data) // 2])
            raise failure
        return write(self, raw_data, filename, compress)

    args = ["prepare", "--task", "recognition2d", "--data.data_dir", str(raw), "--out", str(out),
            "--data.image_size", "8"]  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(BinaryWriter, "write_chunk_to_file", fills_the_disk_at_val)
        capsys.readouterr()
        with pytest.raises(SystemExit if isinstance(failure, OSError) else KeyboardInterrupt):
            main(args)
    if isinstance(failure, OSError):
        err = capsys.readouterr().err.strip()
        line = err.splitlines()[-1]  # after the small split's warning
        assert "Traceback" not in err and str(out) in line and "No space left on device" in line
    assert (list(out.iterdir()) == []) if out_was == "empty" else not out.exists()
    main(args)
    assert (out / RECORD).is_file()


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 in this process, with one bucket ``data``: boto3, the client LitData's
    ``S3Client`` wraps and the suite reads records and checks shards through, talks to it;
    nothing leaves the machine."""
    import boto3
    from moto import mock_aws

    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="data")
        yield client


def upload(client, folder: Path, prefix: str) -> str:
    """Every file of ``folder`` under ``s3://data/prefix``; that URL."""
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "data", f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://data/{prefix}"


def hashes_counted(monkeypatch, seconds: float = 0.0) -> list[str]:
    """The names of the shards hashed from now on, each hash taking ``seconds`` longer (a large
    shard); the list fills as they are hashed."""
    import time

    from cnnsuite.data import shards

    hashed, sha256 = [], shards.PreparedFiles.sha256

    def counted(files, name, **kwargs):
        hashed.append(name)
        time.sleep(seconds)
        return sha256(files, name, **kwargs)

    monkeypatch.setattr(shards.PreparedFiles, "sha256", counted)
    return hashed


def disk_with_free(monkeypatch, free: int) -> None:
    """Every disk the suite asks about has ``free`` bytes free, whatever this machine's have."""
    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=free))


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_folder_checked_once_is_hashed_again_only_where_a_shard_changed(tmp_path, monkeypatch, request, store):
    """A run hashes every shard of a prepared folder; a later run with the same data_root
    hashes only those whose version changed (a local file's size or modification time, an S3
    object's ETag, all through one S3 client: making one takes a good part of a second), and
    still refuses a damaged one."""
    import litdata.streaming.client
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    out = tmp_path / "prepared"
    prepare("recognition2d", make_image_folder(tmp_path / "raw", per_class=4), out, "--data.image_size", "8")
    names = sorted(json.loads((out / RECORD).read_text())["files"])
    location = upload(request.getfixturevalue("s3"), out, "prepared") if store == "s3" else str(out)
    hashed = hashes_counted(monkeypatch)
    clients = []
    client = litdata.streaming.client.S3Client
    monkeypatch.setattr(litdata.streaming.client, "S3Client", lambda: clients.append(1) or client())

    def open_prepared():
        hashed.clear()
        clients.clear()
        RecognitionDataModule(data_dir=location, image_size=8, data_root=str(tmp_path / "data"))
        assert len(clients) == (store == "s3")
        return sorted(hashed)

    assert open_prepared() == names and len([n for n in names if n.endswith(".bin")]) >= 3
    assert open_prepared() == []
    shard = next(n for n in names if n.endswith(".bin"))
    damaged = bytearray((out / shard).read_bytes())
    damaged[-1] ^= 1
    if store == "s3":
        request.getfixturevalue("s3").put_object(Bucket="data", Key=f"prepared/{shard}", Body=bytes(damaged))
    else:
        (out / shard).write_bytes(bytes(damaged))
    with pytest.raises(ConfigError, match="sha256"):
        open_prepared()
    assert hashed == [shard]  # the changed one alone
    if store == "s3":
        # put back as it was (the same ETag as the hash kept): the damaged copy was not kept, so
        # the shard is fetched again, and the local copy is the original's
        request.getfixturevalue("s3").upload_file(str(out / shard), "data", f"prepared/{shard}")
        assert open_prepared() == [shard]
        (copy,) = (tmp_path / "data" / "cache" / "prepared").glob(f"*/{shard}")
        assert copy.read_bytes() == (out / shard).read_bytes()


def test_processes_starting_together_hash_a_folder_once(tmp_path, monkeypatch):
    """DDP ranks open the prepared folder at the same moment, before any of them has kept its
    hashes: they check it one after another, so only the first hashes (on S3: downloads) it."""
    import threading

    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    out = tmp_path / "prepared"
    prepare("recognition2d", make_image_folder(tmp_path / "raw", per_class=4), out, "--data.image_size", "8")
    names = json.loads((out / RECORD).read_text())["files"]
    hashed = hashes_counted(monkeypatch, seconds=0.05)  # the other rank starts while one is hashing
    together, failed = threading.Barrier(2), []

    def rank():
        together.wait()
        try:
            RecognitionDataModule(data_dir=str(out), image_size=8, data_root=str(tmp_path / "data"))
        except Exception as err:  # noqa: BLE001 - reported below, in the test's thread
            failed.append(err)

    ranks = [threading.Thread(target=rank) for _ in range(2)]
    for thread in ranks:
        thread.start()
    for thread in ranks:
        thread.join()
    assert not failed
    assert sorted(hashed) == sorted(names)


@pytest.mark.parametrize("disk", ["room", "full"])
def test_a_prepared_folder_on_s3_trains_as_the_same_folder_on_disk(tmp_path, s3, monkeypatch, disk):
    """``--data.data_dir s3://...`` trains as from the local folder it was copied from: the same
    metrics. With room on the disk, the shards are downloaded under ``<data_root>/cache/prepared``,
    hashed and read there (LitData fetches nothing from the bucket: on object
    storage it reads each item with two requests); without, they are streamed from the bucket,
    one line saying so, and what LitData keeps of them (each split's index) goes under
    ``<data_root>/cache``, not the user's home. LitData fetches through obstore, which speaks
    HTTP itself and bypasses the botocore that moto listens to: here it takes its boto3 path."""
    import litdata.streaming.downloader

    monkeypatch.setattr(litdata.streaming.downloader, "_OBSTORE_AVAILABLE", False)
    fetched = []
    download = litdata.streaming.downloader.S3Downloader.download_bytes
    monkeypatch.setattr(litdata.streaming.downloader.S3Downloader, "download_bytes",
                        lambda *args, **kwargs: fetched.append(1) or download(*args, **kwargs))  # fmt: skip
    disk_with_free(monkeypatch, 2**30 if disk == "full" else 2**40)
    raw = make_image_folder(tmp_path / "raw", per_class=6)
    out = tmp_path / "prepared"
    prepare("recognition2d", raw, out, "--data.image_size", "16", "--data.augment", "false")
    location = upload(s3, out, "prepared")
    common = ["--trainer.max_epochs", "1", "--data.image_size", "16", "--data.augment", "false", *TINY_2D]
    on_disk = fit("recognition2d", tmp_path / "a", "--data.data_dir", str(out), *common)
    full = pytest.warns(UserWarning, match=f"^{location}: copying its shards .* streamed from object storage")
    with full if disk == "full" else nullcontext():
        on_s3 = fit("recognition2d", tmp_path / "b", "--data.data_dir", location, *common)
    assert metrics_of(on_s3) == metrics_of(on_disk)
    cache = tmp_path / "b" / "data" / "cache"
    if disk == "room":
        assert not fetched
        (copy,) = (cache / "prepared").iterdir()
        shard_files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != RECORD)
        assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == shard_files
        assert all((copy / name).read_bytes() == (out / name).read_bytes() for name in shard_files)
        return
    assert fetched and not (cache / "prepared").exists()

    def chunks(indexes):
        return sorted(json.dumps(json.loads(p.read_text())["chunks"], sort_keys=True) for p in indexes)

    assert chunks((cache / "litdata").rglob("index.json")) == chunks(out.glob("*/index.json"))


def test_prepare_onto_s3_uploads_the_record_last_and_a_run_here_fetches_nothing_again(tmp_path, s3, monkeypatch):
    """``cnnsuite prepare --out s3://...`` uploads every shard, then the record (a prefix without
    one is not a prepared folder), and keeps them as this machine's local copy with their
    hashes: a run here on that data_root scores as from the raw files without hashing, so
    without downloading, any shard. A prefix that holds anything is refused, in one line."""
    from cnnsuite.data import shards

    raw = make_image_folder(tmp_path / "raw", per_class=6)
    settings = ["--data.image_size", "16", "--data.augment", "false"]
    uploaded = []
    upload = shards.PreparedFiles.upload
    monkeypatch.setattr(shards.PreparedFiles, "upload",
                        lambda files, path, name: uploaded.append(name) or upload(files, path, name))  # fmt: skip
    prepare("recognition2d", raw, "s3://data/prepared", "--data.data_root", str(tmp_path / "b" / "data"), *settings)
    record = json.loads(s3.get_object(Bucket="data", Key=f"prepared/{RECORD}")["Body"].read())
    stored = [item["Key"] for item in s3.list_objects_v2(Bucket="data")["Contents"]]
    assert sorted(stored) == sorted(f"prepared/{name}" for name in [*record["files"], RECORD])
    assert uploaded[-1] == RECORD and len(uploaded) == len(stored)

    hashed = hashes_counted(monkeypatch)
    disk_with_free(monkeypatch, 0)  # a disk nearly full by now: a copy that lacks nothing is still used
    common = ["--trainer.max_epochs", "1", *settings, *TINY_2D]
    from_raw = fit("recognition2d", tmp_path / "a", "--data.data_dir", str(raw), *common)
    # the same URL, written with a trailing slash: the same copy and kept hashes
    from_s3 = fit("recognition2d", tmp_path / "b", "--data.data_dir", "s3://data/prepared/", *common)
    assert metrics_of(from_s3) == metrics_of(from_raw)
    assert hashed == [] and not (tmp_path / "b" / "data" / "cache" / "litdata").exists()  # read from the copy
    # the copy holds what the record names, no more: the record itself, and anything else, went
    (copy,) = (tmp_path / "b" / "data" / "cache" / "prepared").iterdir()
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == sorted(record["files"])

    with pytest.raises(ConfigError, match=r"^--out s3://data/prepared: not empty"):
        prepare("recognition2d", raw, "s3://data/prepared", *settings)


def test_an_s3_folder_that_cannot_be_read_is_one_line_naming_the_object(tmp_path, s3, capsys):
    """No bucket, no record, a shard missing: each is one line naming the URL, from the
    datamodule and from the command line alike, never the S3 client's many-line error."""
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    with pytest.raises(ConfigError) as err:
        RecognitionDataModule(data_dir="s3://nobucket/prepared", image_size=8)
    message = str(err.value)
    assert message.startswith(f"s3://nobucket/prepared/{RECORD}: cannot be read (") and "\n" not in message

    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["fit", "--config", "tasks/recognition2d/config.yaml", "--data.data_dir", "s3://data/nothing",
              "--data.data_root", str(tmp_path / "data")])  # fmt: skip
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert f"s3://data/nothing/{RECORD}: cannot be read" in err_lines[-1]
    assert not any("Traceback" in line for line in err_lines)

    out = tmp_path / "prepared"
    prepare("recognition2d", make_image_folder(tmp_path / "raw", per_class=4), out, "--data.image_size", "8")
    location = upload(s3, out, "prepared")
    shard = next(n for n in sorted(json.loads((out / RECORD).read_text())["files"]) if n.endswith(".bin"))
    s3.delete_object(Bucket="data", Key=f"prepared/{shard}")
    with pytest.raises(ConfigError) as err:
        RecognitionDataModule(data_dir=location, image_size=8, data_root=str(tmp_path / "data"))
    message = str(err.value)
    assert message.startswith(f"{location}: shard {shard} of {RECORD} cannot be read (") and "\n" not in message

    # a data_root whose local copy cannot be written
    (tmp_path / "ro" / "cache").mkdir(parents=True)
    (tmp_path / "ro" / "cache" / "prepared").write_text("a file where a folder would go")
    s3.upload_file(str(out / shard), "data", f"prepared/{shard}")
    with pytest.raises(ConfigError) as err:
        RecognitionDataModule(data_dir=location, image_size=8, data_root=str(tmp_path / "ro"))
    message = str(err.value)
    assert message.startswith(str(tmp_path / "ro" / "cache" / "prepared"))
    assert ": the local copy cannot be written (" in message and "\n" not in message


def test_a_shard_whose_download_is_cut_short_leaves_nothing_in_the_local_copy(tmp_path, s3, monkeypatch):
    """A download that breaks off after its first bytes (and again on each retry) is one line
    naming the shard, and leaves neither the shard nor a part of it in the local copy."""
    import s3transfer.download
    from botocore.exceptions import ReadTimeoutError
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    out = tmp_path / "prepared"
    prepare("recognition2d", make_image_folder(tmp_path / "raw", per_class=4), out, "--data.image_size", "8")
    location = upload(s3, out, "prepared")
    chunk = s3transfer.download.DownloadChunkIterator.__next__

    def cut_short(self):
        if self._num_reads:  # the first bytes were handed on to be written
            raise ReadTimeoutError(endpoint_url=location)
        return chunk(self)

    monkeypatch.setattr(s3transfer.download.DownloadChunkIterator, "__next__", cut_short)
    with pytest.raises(ConfigError) as err:
        RecognitionDataModule(data_dir=location, image_size=8, data_root=str(tmp_path / "data"))
    message = str(err.value)
    assert message.startswith(f"{location}: shard ") and " cannot be copied into " in message and "\n" not in message
    assert [p for p in (tmp_path / "data" / "cache" / "prepared").rglob("*") if p.is_file()] == []


def test_a_full_disk_under_the_local_copy_is_one_line_naming_it(tmp_path, s3, monkeypatch, capsys):
    """The disk of the local copy filling up while a shard downloads (the file system's error
    names no file) is one line from the command naming the shard, the local copy and the
    reason, and leaves no part of the shard there."""
    import errno

    import s3transfer.utils

    out = tmp_path / "prepared"
    prepare("recognition2d", make_image_folder(tmp_path / "raw", per_class=4), out, "--data.image_size", "8")
    location = upload(s3, out, "prepared")
    opened = s3transfer.utils.OSUtils.open

    def full(self, filename, mode):
        handle = opened(self, filename, mode)
        handle.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return handle

    monkeypatch.setattr(s3transfer.utils.OSUtils, "open", full)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["fit", "--config", "tasks/recognition2d/config.yaml", "--data.data_dir", location,
              "--data.data_root", str(tmp_path / "data"), "--data.image_size", "8"])  # fmt: skip
    line = capsys.readouterr().err.strip().splitlines()[-1]
    copy = tmp_path / "data" / "cache" / "prepared"
    assert line.startswith(f"cnnsuite fit: error: {location}: shard ") and f"cannot be copied into {copy}" in line
    assert line.endswith("No space left on device)")
    assert [p for p in copy.rglob("*") if p.is_file()] == []


def test_a_run_on_shards_killed_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    """The loader over shards is the suite's resumable one: a step checkpoint taken mid-epoch
    resumes to the weights of the run that was not stopped."""
    from test_long_runs import assert_same_weights

    from cnnsuite.training.runs import AtomicCheckpointIO

    raw = make_image_folder(tmp_path / "raw", per_class=6)
    out = tmp_path / "prepared"
    prepare("recognition2d", raw, out, "--data.image_size", "16")
    first_step = tmp_path / "step-1.ckpt"
    save = AtomicCheckpointIO.save_checkpoint

    def save_and_keep_the_first(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        if path.endswith("last.ckpt") and not first_step.exists():
            first_step.write_bytes(open(path, "rb").read())

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_and_keep_the_first)
    common = ["--data.data_dir", str(out), "--data.image_size", "16", "--data.batch_size", "4",
              "--trainer.max_epochs", "1", "--last_checkpoint.every_n_train_steps", "1", "--evaluate", "false",
              *TINY_2D]  # fmt: skip
    whole = fit("recognition2d", tmp_path / "whole", *common)
    assert torch.load(first_step, weights_only=True)["global_step"] == 1
    part = tmp_path / "part" / "runs" / "version_0" / "checkpoints"
    part.mkdir(parents=True)
    (part / "last.ckpt").write_bytes(first_step.read_bytes())
    resumed = fit("recognition2d", tmp_path / "part", *common, "--ckpt_path", "last")
    assert_same_weights(resumed / "checkpoints" / "last.ckpt", whole / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize(
    "edit",
    [lambda facts: facts[next(iter(facts))].update(duration="two seconds"), lambda facts: facts.pop(next(iter(facts)))],
)
def test_a_prepared_videos_record_with_unreadable_sample_facts_is_one_line(tmp_path, edit):
    """The record is a file a user may edit (and hash again): facts that are not a duration,
    rate and frame size for each video are named as the record's, not a traceback."""
    from cnnsuite.tasks.video3d.datamodule import VideoDataModule
    from test_video3d import make_video_folder

    raw = make_video_folder(tmp_path / "raw", per_class=2)
    out = tmp_path / "prepared"
    prepare("video3d", raw, out, "--data.frames_per_clip", "4", "--data.frame_size", "16")
    record = json.loads((out / RECORD).read_text())
    edit(record["sample_facts"])
    (out / RECORD).write_text(json.dumps(record))
    rehashed(out)
    with pytest.raises(ConfigError, match=r"prepared: its record's sample_facts are not what cnnsuite prepare"):
        VideoDataModule(data_dir=str(out), frames_per_clip=4, frame_size=16, data_root=str(tmp_path / "data"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(channels=100_000), "channels is 100000, expected a whole number from 1 to 1024"),
        (lambda r: r.update(channels=0), "channels is 0, expected a whole number from 1 to 1024"),
        (lambda r: r.update(class_names=r["class_names"][:1]), "targets is {"),
        (lambda r: r.update(class_names=r["class_names"][:2]), "targets is {"),  # the third class's index: 2 of 2
        (lambda r: r.update(multilabel="yes"), 'multilabel is "yes", expected true or false'),
        (lambda r: r.update(preprocessing=[1]), "preprocessing is [1], expected an object of values and tensors"),
        (lambda r: r["preprocessing"]["tensors"].update(mean=[0.5, float("nan")]), "preprocessing is {"),
        (lambda r: r["preprocessing"]["tensors"].update(mean=[[1], [1, 2]]), "tensors (lists of numbers)"),
        (lambda r: r["preprocessing"]["tensors"].update(mean="abc"), "tensors (lists of numbers)"),
        (lambda r: r.update(class_names=["a"] * len(r["class_names"])), "expected a list of distinct class names"),
        (lambda r: r.update(hyper_parameters=["x"]), 'hyper_parameters is ["x"], expected an object'),
        (lambda r: r["items"].pop("val"), "items is {"),
        (lambda r: r["targets"].pop(r["items"]["test"][0]), "which targets does not: expected a target for each"),
        (lambda r: r["targets"].update({r["items"]["train"][0]: -1}), "expected an object of class indices from 0"),
        (lambda r: r.pop("splits"), "not a record written by cnnsuite prepare (no splits)"),
        # training samples as the test split: a run's evaluation would score them as unseen
        (lambda r: r["splits"].update(test=r["items"]["train"][:2]), "is in train and test; expected each sample in"),
        (lambda r: r["splits"]["val"].append(r["splits"]["val"][0]), "is twice in val; expected each sample in one"),
        (lambda r: r["splits"].update(test=[]), "in test, which its splits do not: expected each split's items among"),
        # a training sample streamed as a test item: scored as unseen
        (lambda r: r["items"]["test"].append(r["items"]["train"][0]), "in test, which its splits do not: expected"),
    ],
)
def test_a_hand_edited_record_is_one_line_naming_the_field(tmp_path, edit, message):
    """A record is read from a folder anyone may write: a field that is not what prepare
    writes stops the run in one line naming it, before any shard is read (before: tracebacks
    from jsonargparse, an IndexError in validation, a 26 GB allocation)."""
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    out = tmp_path / "prepared"
    prepare("recognition2d", make_image_folder(tmp_path / "raw", per_class=4), out, "--data.image_size", "8")
    record = json.loads((out / RECORD).read_text())
    edit(record)
    (out / RECORD).write_text(json.dumps(record))
    with pytest.raises(ConfigError) as err:
        RecognitionDataModule(data_dir=str(out), image_size=8, data_root=str(tmp_path / "data"))
    assert str(err.value).startswith(f"{out}/{RECORD}: ") and message in str(err.value) and "\n" not in str(err.value)


def rehashed(out: Path) -> None:
    """The record of ``out`` written again over what its folder now holds, as whoever edits a
    prepared folder by hand can: every sha256 of it matches."""
    import hashlib

    from cnnsuite.data.shards.record import content_hash

    record = json.loads((out / RECORD).read_text())
    names = sorted(p for p in out.rglob("*") if p.is_file() and p.name != RECORD)
    record["files"] = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in names}
    record["sha256"] = content_hash(record, record["files"])
    (out / RECORD).write_text(json.dumps(record))


def edit_index(out: Path, stage: str, edit) -> None:
    index = json.loads((out / stage / "index.json").read_text())
    edit(index)
    (out / stage / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda out: edit_index(out, "train", lambda i: i["config"].update(data_format=["bytes", "pickle"])),
            "train/index.json: data_format is ['bytes', 'pickle'], formats outside ['bool', 'bytes'",
        ),
        (
            lambda out: edit_index(out, "val", lambda i: i["chunks"][0].update(filename="../train/chunk-0-0.bin")),
            "val/index.json: a chunk is '../train/chunk-0-0.bin', not a file of val/ its record lists",
        ),
        (  # a format's dtype is LitData's index of one: anything else fails at the first read
            lambda out: edit_index(out, "train", lambda i: i["config"]["data_format"].__setitem__(0, "int:x")),
            "train/index.json: data_format is ['int:x'",
        ),
        (
            lambda out: edit_index(out, "test", lambda i: i["config"].update(compression="zstd")),
            "test/index.json: compression is 'zstd'",
        ),
        (
            lambda out: edit_index(
                out,
                "train",
                lambda i: i["config"].update(
                    data_spec=i["config"]["data_spec"].replace("builtins.dict", "collections.OrderedDict")
                ),
            ),
            "data_spec nests items in ['collections.OrderedDict'], not dicts",
        ),
        (
            lambda out: (out / "test" / "index.json").rename(out / "test" / "index.bak"),
            "its files do not list test/index.json",
        ),
        (
            lambda out: (
                (out / "val" / "chunk-0-0.bin").unlink()
                or (out / "val" / "chunk-0-0.bin").symlink_to(out / "train" / "chunk-0-0.bin")
            ),
            "shard 'val/chunk-0-0.bin' is not a file inside the prepared folder",
        ),
        (  # LitData failed at the first read past its last item, mid-epoch, in a traceback
            lambda out: edit_index(
                out, "train", lambda i: i["chunks"][0].update(chunk_size=i["chunks"][0]["chunk_size"] - 1)
            ),
            "train/index.json: its chunks hold",
        ),
    ],
    ids=["pickle", "chunk-outside", "dtype", "compressed", "spec-type", "index-unlisted", "symlink", "item-count"],
)
def test_a_hand_made_folder_whose_shards_match_its_record_is_still_refused_where_litdata_would_run_code(
    tmp_path, edit, message
):
    """A record's sha256 shows only that a folder is as its record says: whoever makes a folder
    writes both. What LitData believes of each split's index.json (its decoders, the files a
    read opens) must be what cnnsuite prepare writes, or the run stops in one line before a read
    (before: a ``pickle`` field ran its code at the first item; a chunk named ``../`` was read)."""
    from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule

    out = tmp_path / "prepared"
    prepare("recognition2d", make_image_folder(tmp_path / "raw", per_class=4), out, "--data.image_size", "8")
    edit(out)
    rehashed(out)
    with pytest.raises(ConfigError) as err:
        RecognitionDataModule(data_dir=str(out), image_size=8, data_root=str(tmp_path / "data"))
    assert str(err.value).startswith(str(out)) and message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: [1, 2]\n", "data is [1, 2], expected a mapping"),
        ("data:\n  init_args: [1]\n", "data.init_args is [1], expected a mapping"),
        ("- 1\n", "the config is [1], expected a mapping"),
        ("data: 0\n", "data is 0, expected a mapping"),
        ("data:\n  init_args: []\n", "data.init_args is [], expected a mapping"),
        ("data: {init_args: {image_size: [", "not a readable config"),
    ],
)
def test_a_config_whose_data_section_is_no_mapping_is_one_line(tmp_path, capsys, text, message):
    """``cnnsuite prepare`` reads the config's data section itself: a list where a mapping goes
    was an AttributeError or a TypeError with its traceback."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit):
        main(["prepare", "--task", "recognition2d", "--config", str(config), "--out", str(tmp_path / "out")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"cnnsuite prepare: error: {config}: {message}")
    assert not (tmp_path / "out").exists()


def test_the_hashes_kept_of_verified_shards_get_the_permissions_the_umask_gives_a_new_file(tmp_path):
    """Kept in a data_root a group may share, as the shards themselves are: not tempfile's 0o600,
    which would leave the others hashing every shard again."""
    from cnnsuite.data.shards.verify import read_verified, write_verified

    old = os.umask(0o022)
    try:
        write_verified(tmp_path / "kept" / "shards-verified.json", {"a.bin": [1, 2, "ab"]})
    finally:
        os.umask(old)
    assert read_verified(tmp_path / "kept" / "shards-verified.json") == {"a.bin": [1, 2, "ab"]}
    assert (tmp_path / "kept" / "shards-verified.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["shards-verified.json"]


@pytest.mark.parametrize("named", ["RecognitionDataModule", "cnnsuite.tasks.recognition2d.RecognitionDataModule"])
def test_prepare_takes_a_config_naming_the_datamodule_as_fit_does(tmp_path, capsys, named):
    """A config naming the datamodule by its short name, or where the task's package exports it
    (both of which fit resolves), is the task's: prepare refused it as not the task's datamodule.
    (An unknown setting stops it right after that check, before anything is read or written.)"""
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  class_path: {named}\n  init_args: {{}}\n")
    out = tmp_path / "prepared"
    with pytest.raises(SystemExit):
        main(["prepare", "--task", "recognition2d", "--config", str(config), "--data.nope", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert "--data.nope: not a setting of RecognitionDataModule" in err and not out.exists(), err
    config.write_text("data:\n  class_path: cnnsuite.tasks.video3d.VideoDataModule\n  init_args: {}\n")
    with pytest.raises(SystemExit):
        main(["prepare", "--task", "recognition2d", "--config", str(config), "--out", str(out)])
    assert "is not recognition2d's datamodule" in capsys.readouterr().err
