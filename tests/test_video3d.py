"""video3d: loaders of clips from tiny PyAV videos, worker sharding, CLI fit and evaluation,
short videos in five containers, bad files, short runs that must not collapse."""

import io
import json
import random
import re
import shutil
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import VideoReformatter
from cnnsuite.tasks.video3d import datamodule as video_data
from cnnsuite.tasks.video3d import readers as video_readers
from cnnsuite.tasks.video3d.datamodule import VideoDataModule
from cnnsuite.tasks.video3d.module import VideoAccuracy, VideoAveragePrecision, VideoClassificationModule
from cnnsuite.tasks.video3d.readers import decode_video, upright
from conftest import ROOT, watch_network_and_plots
from conftest import fit as run_fit
from PIL import Image

from cnnsuite.cli import main
from cnnsuite.data import BadFileError, Input
from cnnsuite.data.augment import BatchRandomResizedCrop
from cnnsuite.errors import ConfigError
from cnnsuite.training.classification import ClassificationModule
from cnnsuite.trust.checkpoint import rebuild
from cnnsuite.use.predict import Predictor

CONFIG = str(ROOT / "tasks" / "video3d" / "config.yaml")
QUARTERS = ["--data.val_fraction", "0.25", "--data.test_fraction", "0.25"]
SMALL = {"frames_per_clip": 4, "frame_size": 16, "clip_duration": 1.0, "val_fraction": 0.25, "test_fraction": 0.25}


#: an encoder this PyAV build has for each container a user may bring
CODECS = {".mp4": "libx264", ".mov": "libx264", ".avi": "mpeg4", ".mkv": "libx264", ".webm": "libvpx-vp9"}


def write_bar_video(
    path: Path,
    frames: int,
    step: int,
    fps: int = 8,
    size: int = 16,
    width: int | None = None,
    rotation: int = 0,
    lossless: bool = False,
    first_frame: int = 0,
) -> None:
    """A bright vertical bar on black, ``size`` high and ``width`` (default: ``size``) wide,
    starting at column 3 and moving ``step`` pixels a frame (wrapping around at ``size``).
    ``rotation``: stored as a phone
    stores it, the pixels turned by ``-rotation`` degrees and the stream's display matrix
    saying to turn them back by ``rotation`` (counter-clockwise) when shown. ``lossless``:
    H.264 at ``qp=0``, so that the same picture stored two ways decodes to the same pixels.
    ``first_frame``: the first frame's timestamp in frames (a video cut from a longer one with
    its timestamps kept starts there, not at 0)."""
    with av.open(str(path), "w") as container:
        options = {"qp": "0"} if lossless else {}
        stream = container.add_stream(CODECS[path.suffix], rate=fps, options=options)
        width = width or size
        stream.width, stream.height = (size, width) if rotation % 180 else (width, size)
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for t in range(frames):
            image = np.zeros((size, width, 3), np.uint8)
            image[:, (3 + step * t) % size] = 255
            stored = np.ascontiguousarray(np.rot90(image, k=-rotation // 90))
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            if first_frame:
                frame.pts, frame.time_base = first_frame + t, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_video_folder(root: Path, per_class: int = 4, frames: int = 16) -> Path:
    """``left/`` and ``right/``: 2-second videos at 8 fps (two 1-second clips each); one AVI."""
    for name, step in (("left", -1), ("right", 1)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            write_bar_video(root / name / f"{name}{i}.{'avi' if i == 0 else 'mp4'}", frames, step)
    return root


@pytest.fixture
def video_folder(tmp_path) -> Path:
    return make_video_folder(tmp_path / "videos")


def fit(tmp_path, *extra):
    return run_fit("video3d", tmp_path, "--data.num_workers", "0", *extra)


def test_loader_shapes_time_axis_and_worker_sharding(video_folder):
    dm = VideoDataModule(data_dir=str(video_folder), batch_size=3, num_workers=2, **SMALL)
    assert (dm.class_names, dm.num_classes, dm.in_channels) == (["left", "right"], 2, 3)
    dm.setup("fit")
    train, test = dm.datasets["train"], dm.datasets["test"]
    assert len(train) == len(train.videos) == 4  # one random clip per video per epoch
    assert len(test) == 2 * len(test.videos)  # 2-s videos, 1-s uniform clips

    for stage, dataset, loader in (("train", train, dm.train_dataloader()), ("test", test, dm.test_dataloader())):
        seen, batches = [], 0
        for clips, labels, videos, clip_ids in loader:
            assert clips.shape[1:] == (3, 4, 16, 16) and clips.dtype == torch.float32, stage  # (B, C, T, H, W)
            assert labels.tolist() == [dataset.videos[v].label for v in videos.tolist()]
            seen += clip_ids.tolist()
            batches += 1
        # two workers: every clip of the epoch exactly once, and as many batches as len() says
        assert sorted(seen) == list(range(len(dataset))), stage
        assert batches == len(loader), stage

    # time is axis 1 of a clip: the bar moves along it, the way the class says
    raw, label, _ = test.read(0)
    moves = torch.diff(raw.float().mean(dim=(0, 2)).argmax(dim=-1))  # (C, T, H, W) uint8 -> bar column per frame
    moves = moves % 16 if dm.class_names[label] == "right" else -moves % 16
    assert ((moves >= 1) & (moves <= 3)).all(), moves  # 8 frames subsampled to 4: 2 or 3 frames apart


def test_training_clips_are_cropped_on_the_batch_after_the_transfer(video_folder):
    """The loader gives training clips as it gives the test split's, resized and centre-cropped;
    the random resized crop, one per clip, is made on the batch (where Lightning moved it)."""
    dm = VideoDataModule(data_dir=str(video_folder), hflip=True, **SMALL)
    dm.setup("fit")
    train = dm.datasets["train"]
    random.seed(0)
    clip = train[0][0]
    random.seed(0)  # PyTorchVideo's random clip sampler draws from Python's generator
    torch.testing.assert_close(clip, video_data.ClipTransform(16)(train.read(0)[0]), rtol=0, atol=0)
    clips = torch.stack([train[i][0] for i in range(len(train))])
    batch = [clips, torch.zeros(len(clips)), torch.arange(len(clips)), torch.arange(len(clips))]
    torch.manual_seed(0)
    cropped = dm.augment_batch(batch)
    torch.manual_seed(0)
    torch.testing.assert_close(cropped[0], BatchRandomResizedCrop(scale=(0.6, 1.0), hflip=True)(clips))
    assert not torch.allclose(cropped[0], clips) and cropped[1:] == batch[1:]
    assert VideoDataModule(data_dir=str(video_folder), augment=False, **SMALL).augment_batch(batch) is batch


def test_a_batch_of_clips_is_transformed_at_once_and_as_each_clip_alone(video_folder, monkeypatch):
    """A batch whose frames are all of one size goes through the clip transform once; a batch
    mixing video sizes clip by clip; both give what each clip alone gives."""
    write_bar_video(video_folder / "left" / "wide.mp4", frames=16, step=-1, width=24)
    dm = VideoDataModule(data_dir=str(video_folder), **SMALL)
    videos = dm.usable_videos([sample_id for sample_id, _ in dm.samples()])
    dataset = dm.clip_dataset(dm.root, videos, "test", dm.memory_cache)
    alone = [dataset.transform(dataset.read(i)[0]) for i in range(len(dataset))]
    wide = [i for i, (v, _) in enumerate(dataset.starts) if dataset.videos[v].id.endswith("wide.mp4")]
    calls = []
    transform = dataset.transform
    monkeypatch.setattr(dataset, "transform", lambda frames: calls.append(frames.dim()) or transform(frames))
    same_size = [i for i in range(len(dataset)) if i not in wide]
    for indices, expected_calls in ((same_size, [5]), (list(range(len(dataset))), [4] * len(dataset))):
        calls.clear()
        items = dataset.__getitems__(indices)
        assert calls == expected_calls
        assert [item[3] for item in items] == indices
        for index, item in zip(indices, items, strict=True):
            torch.testing.assert_close(item[0], alone[index], rtol=0, atol=0)


def test_uniform_clips_cover_the_video_in_order(video_folder):
    dm = VideoDataModule(data_dir=str(video_folder), **{**SMALL, "frames_per_clip": 8})
    dm.setup("test")
    test = dm.datasets["test"]
    video = test.starts[0][0]
    first, second = (test.read(i)[0] for i, (v, _) in enumerate(test.starts) if v == video)
    columns = torch.cat([c.float().mean(dim=(0, 2)).argmax(dim=-1) for c in (first, second)])
    step = 1 if test.videos[video].label == 1 else 15
    assert (torch.diff(columns) % 16 == step).all(), columns  # 16 consecutive frames, none lost or repeated


def test_validation_scores_each_videos_middle_clip_and_the_test_every_clip(tmp_path):
    folder = make_video_folder(tmp_path / "videos", frames=24)  # 3-s videos: three 1-s clips

    def starts(dataset) -> list[list[float]]:
        per_video: dict[int, list[float]] = {}
        for video, start in dataset.starts:
            per_video.setdefault(video, []).append(float(start))
        return list(per_video.values())

    for val_clips, expected in (("one", [1.0]), ("all", [0.0, 1.0, 2.0])):
        dm = VideoDataModule(data_dir=str(folder), val_clips=val_clips, **SMALL)
        dm.setup("fit")
        dm.setup("test")
        assert starts(dm.datasets["val"]) == [expected] * len(dm.splits["val"]), val_clips
        assert starts(dm.datasets["test"]) == [[0.0, 1.0, 2.0]] * len(dm.splits["test"]), val_clips
    with pytest.raises(ConfigError, match="data.val_clips='middle'"):
        VideoDataModule(data_dir=str(folder), val_clips="middle")


@pytest.mark.parametrize("rotation", [-90, 90, 180])  # a phone held upright writes -90
@pytest.mark.parametrize("cache_limit_mb", [1024, 0])  # videos decoded once and kept / a clip at a time
def test_a_phone_video_is_read_upright(tmp_path, rotation, cache_limit_mb):
    """A video stored sideways with a display-matrix rotation (as phones write it) decodes to
    the frames of the same video stored upright, 16 high and 24 wide, in both decoding paths."""
    upright, phone = tmp_path / "upright.mp4", tmp_path / "phone.mp4"
    write_bar_video(upright, frames=16, step=1, width=24, lossless=True)
    write_bar_video(phone, frames=16, step=1, width=24, rotation=rotation, lossless=True)
    with av.open(str(phone)) as container:  # stored sideways, as the phone wrote it
        frame = next(container.decode(video=0))
        assert (frame.rotation, frame.height, frame.width) == (
            (rotation + 180) % 360 - 180,
            *((24, 16) if rotation % 180 else (16, 24)),
        )
    dm = VideoDataModule(cache_limit_mb=cache_limit_mb, frames_per_clip=8, frame_size=16)
    read = [dm.read_input(path).sample for path in (upright, phone)]
    torch.testing.assert_close(read[1], read[0], rtol=0, atol=0)
    frames = decode_video(phone).frames
    assert frames.shape == (16, 16, 24, 3)
    assert frames[..., 0].float().mean(dim=1).argmax(dim=-1).tolist() == [(3 + t) % 16 for t in range(16)]


@pytest.mark.parametrize("suffix", sorted(CODECS))
def test_a_video_decodes_to_to_rgbs_frames_through_one_converter(tmp_path, monkeypatch, suffix):
    """Every frame decodes to the pixels of PyAV's ``frame.to_rgb()``, converted by one
    reformatter for the whole video (``to_rgb`` makes one a frame, dearer than decoding small
    frames); a clip cut from the kept frames is a view of them, not a copy."""
    path = tmp_path / f"bar{suffix}"
    write_bar_video(path, frames=12, step=1, width=24)
    with av.open(str(path)) as container:
        expected = torch.stack([torch.from_numpy(f.to_rgb().to_ndarray()) for f in container.decode(video=0)])
    made = []
    monkeypatch.setattr(video_readers, "VideoReformatter", lambda: made.append(1) or VideoReformatter())
    video = decode_video(path)
    torch.testing.assert_close(video.frames, expected, rtol=0, atol=0)
    assert len(made) == 1
    clip = video.get_clip(Fraction(1, 2), Fraction(1))
    assert clip.shape == (3, 4, 16, 24) and clip.dtype == torch.uint8
    assert clip.untyped_storage().data_ptr() == video.frames.untyped_storage().data_ptr()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on a tiny user folder: ``(folder, run folder)``, shared by this file's tests of
    a checkpoint."""
    tmp = tmp_path_factory.mktemp("video")
    folder = make_video_folder(tmp / "videos")
    run = fit(
        tmp,
        "--data.data_dir", str(folder),
        "--data.frames_per_clip", "8",
        "--data.frame_size", "16",
        "--data.batch_size", "4",
        "--data.train_clips_per_video", "2",
        *QUARTERS,
        "--trainer.max_epochs", "1",
        "--evaluate", "false",
    )  # fmt: skip
    return folder, run


def test_fit_evaluate_and_checkpoint_contract(tmp_path, trained, monkeypatch):
    folder, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert (hparams["num_classes"], hparams["in_channels"], hparams["class_names"]) == (2, 3, ["left", "right"])
    # The contact sheet shows the test pass's predictions: the network does not run again for it.
    calls = watch_network_and_plots(monkeypatch, VideoClassificationModule)
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(tmp_path / "eval")])
    assert calls[-1] == "plots" and "forward" in calls
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/acc", "test/video_acc", "test/acc_macro", "test/auroc", "test/acc/left"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert {"confusion_matrix.png", "contact_sheet.png", "report.md"} <= {p.name for p in (tmp_path / "eval").iterdir()}
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["test"]) == 2 and not set(splits["test"]) & set(splits["train"])


# --- prediction on raw files ----------------------------------------------------------------------


def test_predict_a_folder_with_an_unreadable_video(tmp_path, trained):
    folder, run = trained
    inputs = tmp_path / "inputs"
    shutil.copytree(folder / "right", inputs)
    (inputs / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50)
    # a still image under a video's name: FFmpeg opens it as a video of one frame lasting 0 s,
    # which was predicted with full confidence
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(inputs / "still.mp4", format="PNG")
    out = tmp_path / "out"
    main(["predict", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(inputs), "--out", str(out)])
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    bad = [line for line in lines if "error" in line]
    assert [Path(line["path"]).name for line in bad] == ["broken.mp4", "still.mp4"]
    assert "broken.mp4: cannot open as a video" in bad[0]["error"]
    assert "still.mp4: lasts 0 s: a still image (png_pipe), not a video" in bad[1]["error"]
    for line in lines:
        if line not in bad:  # 2-s videos: two 1-s clips each, and the video's own result
            assert [clip["start"] for clip in line["clips"]] == [0.0, 1.0]
            assert line["class"] in ("left", "right") and set(line["probabilities"]) == {"left", "right"}
    assert len(list((out / "pictures").glob("*.png"))) == 4
    assert json.loads((out / "summary.json").read_text())["failed"] == [line["path"] for line in bad]


def test_predict_agrees_with_evaluate_per_clip_and_per_video(tmp_path, trained):
    """A video read for prediction is the test dataset's clips of it; its probabilities are the
    mean of the model's on those clips, and its classes score evaluate's ``test/video_acc``."""
    folder, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    model, datamodule = rebuild(ckpt, data={"data_dir": folder})
    test = datamodule.datasets["test"]
    predictor = Predictor(ckpt, accelerator="cpu")
    inputs = [predictor.read(folder / video.id) for video in test.videos]
    predictions = predictor.predict(inputs)
    hits = []
    for v, (video, item, prediction) in enumerate(zip(test.videos, inputs, predictions, strict=True)):
        clips = torch.stack([test[i][0] for i, (u, _) in enumerate(test.starts) if u == v])
        torch.testing.assert_close(item.sample, clips, rtol=0, atol=0)
        with torch.no_grad():
            expected = model(clips).softmax(1).mean(0)
        got = torch.tensor([prediction["probabilities"][c] for c in model.class_names])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        hits.append(prediction["class"] == model.class_names[video.label])
    assert sum(hits) / len(hits) == pytest.approx(metrics["test/video_acc"], abs=1e-6)


def test_phone_videos_score_and_predict_as_the_same_videos_stored_upright(tmp_path, trained):
    """The same left and right videos stored upright and as a phone stores them (sideways,
    with a display-matrix rotation): evaluation scores them alike and prediction gives each
    the same class and probabilities."""
    _, run = trained
    ckpt = str(run / "checkpoints" / "best.ckpt")
    results = []
    for rotation in (0, -90):
        folder = tmp_path / f"rotation{rotation}"
        for name, step in (("left", -1), ("right", 1)):
            (folder / name).mkdir(parents=True)
            for i in range(2):
                write_bar_video(folder / name / f"{name}{i}.mp4", 16, step, rotation=rotation, lossless=True)
        out = tmp_path / f"out{rotation}"
        main(["evaluate", "--ckpt", ckpt, "--data.data_dir", str(folder), "--out", str(out / "eval")])
        main(["predict", "--ckpt", ckpt, "--input", str(folder / "right"), "--out", str(out / "predict")])
        metrics = json.loads((out / "eval" / "metrics.json").read_text())
        lines = [json.loads(line) for line in (out / "predict" / "predictions.jsonl").read_text().splitlines()]
        results.append((metrics, {Path(line["path"]).name: line for line in lines}))
    (upright, upright_lines), (phone, phone_lines) = results
    for key in ("test/acc", "test/video_acc", "test/auroc"):
        assert phone[key] == pytest.approx(upright[key], abs=1e-6), key
    assert sorted(phone_lines) == ["right0.mp4", "right1.mp4"]
    for name, line in phone_lines.items():
        assert line["class"] == upright_lines[name]["class"]
        assert line["probabilities"] == pytest.approx(upright_lines[name]["probabilities"], abs=1e-6)


def test_a_clip_longer_than_the_embedded_videos_is_refused_only_for_them(tmp_path):
    """The embedded videos are 3 s: a 4-s clip cannot come from them, but a run on the user's
    own videos may have it, and its checkpoint rebuilds without data for prediction."""
    datamodule = VideoDataModule(data_root=str(tmp_path), clip_duration=4.0)
    with pytest.raises(ValueError, match="data.clip_duration=4.0: the embedded videos are 3.0 s long"):
        datamodule.prepare_data()
    assert not any(tmp_path.iterdir())


#: per class: (video, frames at 8 fps, split); four of seven are shorter than a 1-s clip, in
#: five containers, and the 3-frame one holds under half a clip's frames
MIXED_LENGTHS = [
    ("a.mp4", 16, "train"),
    ("b.mov", 5, "train"),
    ("c.avi", 3, "train"),
    ("d.mkv", 4, "val"),
    ("e.mkv", 16, "val"),
    ("f.webm", 6, "test"),
    ("g.webm", 16, "test"),
]


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".webm"])
@pytest.mark.parametrize("first_frame", [2, 80])
def test_a_video_whose_timestamps_start_late_lasts_its_own_length(tmp_path, suffix, first_frame):
    """A 3-s video whose first frame is stamped later than 0 (cut with its timestamps kept, or
    an encoder's delay) lasts 3 s: an MP4's stream duration is a length, not an end, and a
    Matroska duration counts from 0, not from the first frame; its 3 clips all decode."""
    video = tmp_path / f"late{suffix}"
    write_bar_video(video, 24, 1, first_frame=first_frame)
    duration, fps, _ = video_readers.probe_video(video)
    assert (duration, fps) == (3, 8.0)
    decoded = decode_video(video)
    for start in range(3):
        clip = decoded.get_clip(Fraction(start), Fraction(start + 1))
        assert clip is not None and clip.shape[1] == 8, (start, clip)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_time_range_decodes_from_the_frame_stamped_at_its_start_up_to_its_end(tmp_path, suffix):
    """``[start, end)``: the frame stamped exactly at the start is the range's first, the one at
    the end is not in it; the frames are those a whole decode holds at those times."""
    video = tmp_path / f"bars{suffix}"
    write_bar_video(video, 24, 1, lossless=True)
    whole = decode_video(video)
    ranged = decode_video(video, Fraction(1), Fraction(2))
    assert ranged.pts.tolist() == whole.pts[8:16].tolist()
    assert torch.equal(ranged.frames, whole.frames[8:16])


class Unseekable(io.RawIOBase):
    """A pipe to write to: a muxer cannot go back to fill in a duration or an index."""

    def __init__(self, file):
        self.file = file

    def writable(self):
        return True

    def write(self, data):
        return self.file.write(data)


@pytest.mark.parametrize("suffix", [".webm", ".mkv"])
def test_a_recording_without_a_duration_lasts_to_its_last_frame_end(tmp_path, suffix):
    """A WebM or MKV muxed as it was recorded (a browser's MediaRecorder, a live stream) has no
    duration in its header: it lasts up to its last frame's end, not its start (a 3-s
    recording at 8 fps would lose its third clip, a 1-s one would be shorter than a clip)."""
    video = tmp_path / f"recorded{suffix}"
    with open(video, "wb") as raw, av.open(Unseekable(raw), "w", format=suffix[1:].replace("mkv", "matroska")) as out:
        stream = out.add_stream(CODECS[suffix], rate=8)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for t in range(24):
            image = np.zeros((16, 16, 3), np.uint8)
            image[:, t % 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(video)) as check:
        assert check.duration is None and check.streams.video[0].duration is None
    assert video_readers.probe_video(video)[:2] == (3, 8.0)


def test_short_videos_in_five_containers_train_with_the_default_config(tmp_path):
    root = tmp_path / "videos"
    lists = {"train": [], "val": [], "test": []}
    for name, step in (("left", -1), ("right", 1)):
        (root / name).mkdir(parents=True)
        for video, frames, stage in MIXED_LENGTHS:
            write_bar_video(root / name / video, frames, step)
            lists[stage].append(f"{name}/{video}")
    write_split_lists(root, lists)
    frames_of = {video: frames for video, frames, _ in MIXED_LENGTHS}

    dm = VideoDataModule(data_dir=str(root), frame_size=16)  # the default clip: 1 s, 8 frames
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
        datasets = dict(dm.datasets)
    said = [str(w.message) for w in caught if "shorter than one clip" in str(w.message)]
    assert len(said) == 1 and "8 of 14 videos" in said[0], said  # said once, for the whole run
    for stage, dataset in datasets.items():
        for index, (v, _) in enumerate(dataset.starts):
            video = dataset.videos[v]
            frames = frames_of[video.id.split("/")[1]]
            if stage != "train":  # a short video is one clip; a 2-s one two, in every container
                starts = [float(start) for u, start in dataset.starts if u == v]
                assert starts == ([0.0] if frames < 8 else [0.0, 1.0]), (video.id, starts)
            if frames >= 8:
                continue
            # the whole video at its own pace, then its last frame held: index clamping
            raw, label, _ = dataset.read(index)
            columns = raw.float().mean(dim=(0, 2)).argmax(dim=-1)  # the bar's column in each of the 8 frames
            step = 1 if dm.class_names[label] == "right" else -1
            assert columns.tolist() == ((3 + step * torch.arange(8).clamp(max=frames - 1)) % 16).tolist(), video.id

    run = fit(tmp_path, "--data.data_dir", str(root), "--data.frame_size", "16", "--trainer.max_epochs", "1")
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    for key in ("test/acc", "test/video_acc", "test/auroc"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_a_short_run_does_not_collapse_to_one_class(tmp_path):
    """Two epochs of one batch each on 20 user videos: BatchNorm's running averages have seen
    two updates, and from them the eval-mode network (seed 0) called every test clip one
    class, at AUROC 1.0. Statistics recomputed before validation (PreciseBatchNorm, on by
    default for a network with BatchNorm) score it right."""
    videos = make_video_folder(tmp_path / "videos", per_class=10)
    run = fit(tmp_path, "--data.data_dir", str(videos), *QUARTERS, "--trainer.max_epochs", "2")
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    recalls = {name: metrics[f"test/acc/{name}"] for name in ("left", "right")}
    assert metrics["test/acc"] >= 0.9 and min(recalls.values()) >= 0.8, (metrics["test/acc"], recalls)


def test_embedded_default_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.setattr(video_data, "DEFAULT_VIDEOS_PER_CLASS", 5)
    fractions = ["--data.val_fraction", "0.2", "--data.test_fraction", "0.2"]
    fit(tmp_path, "--trainer.fast_dev_run", "true", "--data.batch_size", "4", *fractions)
    default = tmp_path / "data" / "video3d"
    assert sorted(p.name for p in default.iterdir() if p.is_dir()) == sorted(VideoDataModule().class_names)
    assert len(list(default.glob("*/*.mp4"))) == 40
    stamp = default.stat().st_mtime_ns
    VideoDataModule(data_root=str(tmp_path / "data")).prepare_data()  # idempotent
    assert default.stat().st_mtime_ns == stamp


def write_split_lists(root: Path, lists: dict[str, list[str]]) -> None:
    """``train.csv``, ``val.csv`` and ``test.csv`` in ``root``, one line a video."""
    for stage, lines in lists.items():
        (root / f"{stage}.csv").write_text("\n".join(lines) + "\n")


def test_every_bad_video_is_named_at_once(video_folder):
    # one bad video in the training split, one in the test split: fit's setup finds both
    (video_folder / "left" / "empty.mp4").write_bytes(b"")
    (video_folder / "right" / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50)
    lists = {"train": ["left/left1.mp4", "left/left2.mp4", "right/right1.mp4", "right/right2.mp4", "left/empty.mp4"]}
    lists |= {"val": ["left/left3.mp4", "right/right3.mp4"], "test": ["left/left0.avi", "right/right0.avi"]}
    write_split_lists(video_folder, lists | {"test": [*lists["test"], "right/garbage.mp4"]})

    with pytest.raises(BadFileError) as raised:
        VideoDataModule(data_dir=str(video_folder), **SMALL).setup("fit")
    message = str(raised.value)
    assert message.startswith("2 of 10 videos cannot be used")
    assert re.search(r"empty\.mp4: empty file", message) and re.search(r"garbage\.mp4: cannot open as a video", message)

    skipping = VideoDataModule(data_dir=str(video_folder), on_bad_file="skip", **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skipping.setup("fit")
        kept = sum(len(ds.videos) for ds in skipping.datasets.values())
    named = [str(w.message) for w in caught if "empty.mp4" in str(w.message)]
    assert len(named) == 1 and "garbage.mp4" in named[0], named  # one warning, both names
    assert kept == 8


def test_class_folder_without_videos_and_bad_keys(tmp_path, video_folder, monkeypatch):
    (video_folder / "up").mkdir()
    (video_folder / "up" / "notes.txt").write_text("no videos here")
    probed = []
    monkeypatch.setattr(video_data, "probe_video", lambda path: probed.append(path))
    with pytest.raises(ValueError, match="up: class folder holds no file"):
        VideoDataModule(data_dir=str(video_folder))
    assert probed == []  # said at once, not after opening every video of the other folders
    with pytest.raises(FileNotFoundError, match="data.data_dir=.*nowhere"):
        VideoDataModule(data_dir=str(tmp_path / "nowhere"))
    for key, value in (("clip_duration", 0), ("frames_per_clip", 0), ("on_bad_file", "ignore"),
                       ("train_clips_per_video", 10**8)):  # fmt: skip
        with pytest.raises(ValueError, match=f"data.{key}"):
            VideoDataModule(**{key: value})
    with pytest.raises(ValueError, match="model.spatial_dims"):
        VideoClassificationModule(spatial_dims=1)


def test_clip_smaller_than_the_backbone_stride_is_named(tmp_path, video_folder):
    # the default backbone pools time 2x in each of 3 stages: 4 frames become 0
    with pytest.raises(
        ValueError, match=r"shape \(3, 4, 32, 32\) are 4x32x32 where the backbone's total stride is 8x8x8"
    ):
        fit(tmp_path, "--data.data_dir", str(video_folder), "--data.frames_per_clip", "4", *QUARTERS)


def test_csv_split_lists(video_folder):
    lists = {"train": ["left/left1.mp4 1", "right/right1.mp4 2", "left/left2.mp4 1", "right/right2.mp4 2"]}
    lists |= {"val": ["left/left3.mp4 1", "right/right3.mp4 2"], "test": ["left/left0.avi -1", "right/right0.avi"]}
    write_split_lists(video_folder, lists)
    dm = VideoDataModule(data_dir=str(video_folder), **SMALL)
    dm.setup("fit")
    assert dm.splits["test"] == ["left/left0.avi", "right/right0.avi"]
    assert [v.label for v in dm.datasets["train"].videos] == [0, 1, 0, 1]

    # .txt lists beside them (every other task's kind, read where no .csv lists are): which is meant is not guessed
    (video_folder / "train.txt").write_text("left/left1.mp4\n")
    two_kinds = (
        r"^[^\n]*: holds split lists of two kinds, \.csv \(train\.csv, val\.csv, test\.csv\) and \.txt \(train\.txt\)"
    )
    with pytest.raises(ConfigError, match=two_kinds):
        VideoDataModule(data_dir=str(video_folder), **SMALL).setup("fit")
    (video_folder / "train.txt").unlink()

    # every line's problem at once: a contradicting label, a video that is not there, a path outside
    (video_folder / "val.csv").write_text("left/left3.mp4 1\nright/right3.mp4 1\nright/gone.mp4 2\n/elsewhere/x.mp4\n")
    with pytest.raises(ValueError, match=r"^3 problems in the split lists of ") as raised:
        VideoDataModule(data_dir=str(video_folder), **SMALL).setup("fit")
    message = str(raised.value)
    assert "val.csv, line 2: label 1 for folder 'right'" in message
    assert "val.csv, line 3: right/gone.mp4 is not a video of the class folders" in message
    assert "val.csv, line 4: /elsewhere/x.mp4 is not inside" in message
    (video_folder / "val.csv").write_text("left/left3.mp4 1\nright/right3.mp4 1\n")
    with pytest.raises(ValueError, match=r"^a problem in the split lists of .*\n  .*val.csv, line 2: label 1"):
        VideoDataModule(data_dir=str(video_folder), **SMALL).setup("fit")

    # UCF101's lists: train and test, no val: validation is drawn from train
    (video_folder / "val.csv").unlink()
    ucf = VideoDataModule(data_dir=str(video_folder), **SMALL)
    ucf.setup("fit")
    train = {line.split()[0] for line in lists["train"]}
    assert ucf.splits["val"] and set(ucf.splits["val"]) | set(ucf.splits["train"]) == train
    assert not set(ucf.splits["val"]) & set(ucf.splits["train"])
    assert ucf.splits["test"] == ["left/left0.avi", "right/right0.avi"]
    (video_folder / "train.csv").write_text("left/left1.mp4 1\n")
    with pytest.raises(ValueError, match=r"the train list holds 1 sample\(s\), too few to draw validation"):
        VideoDataModule(data_dir=str(video_folder), **SMALL).setup("fit")
    (video_folder / "test.csv").unlink()
    with pytest.raises(ValueError, match=r"found train .csv split lists but not val, test; expected train, val"):
        VideoDataModule(data_dir=str(video_folder), **SMALL).setup("fit")


def make_split_folders(root: Path, splits: dict[str, int]) -> Path:
    """Kinetics' layout: ``<split>/<class>/<video>.mp4``, ``splits[split]`` videos a class."""
    for split, per_class in splits.items():
        for name, step in (("left", -1), ("right", 1)):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                write_bar_video(root / split / name / f"{name}{i}.mp4", 16, step)
    return root


def test_kinetics_split_folders_are_the_split(tmp_path):
    """``train/<class>/…`` and ``val/<class>/…``: the official val is the test split, validation
    is carved from train (said once); with a ``test/`` folder the three folders are the split."""
    root = make_split_folders(tmp_path / "kinetics", {"train": 4, "val": 1})
    dm = VideoDataModule(data_dir=str(root), **SMALL)
    assert dm.class_names == ["left", "right"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    said = [str(w.message) for w in caught if "no test folder" in str(w.message)]
    assert len(said) == 1 and "val/ (2 files) is the test split" in said[0], said
    assert dm.splits["test"] == ["val/left/left0.mp4", "val/right/right0.mp4"]
    assert len(dm.splits["val"]) == 2 and all(i.startswith("train/") for i in dm.splits["val"] + dm.splits["train"])
    assert sorted(dm.splits["val"] + dm.splits["train"]) == [
        f"train/{c}/{c}{i}.mp4" for c in ("left", "right") for i in range(4)
    ]
    assert {dm.class_names[v.label] for v in dm.datasets["test"].videos} == {"left", "right"}
    assert all(v.id.split("/")[1] == dm.class_names[v.label] for v in dm.datasets["train"].videos)

    make_split_folders(root, {"test": 1})
    dm = VideoDataModule(data_dir=str(root), **SMALL)
    dm.setup("fit")
    assert dm.splits == {
        stage: [f"{folder}/{c}/{c}{i}.mp4" for c in ("left", "right") for i in range(n)]
        for stage, folder, n in (("train", "train", 4), ("val", "val", 1), ("test", "test", 1))
    }

    (root / "test" / "up").mkdir()
    write_bar_video(root / "test" / "up" / "up0.mp4", 16, 1)
    with pytest.raises(ValueError, match=r"test/up: class 'up' has no folder in .*train"):
        VideoDataModule(data_dir=str(root), **SMALL)


def test_a_run_on_split_folders_evaluates_and_predicts_from_its_checkpoint(tmp_path):
    root = make_split_folders(tmp_path / "ucf", {"train": 3, "test": 1})
    run = fit(tmp_path, "--data.data_dir", str(root), "--data.frame_size", "16", "--trainer.max_epochs", "1")
    ckpt = run / "checkpoints" / "best.ckpt"
    splits = torch.load(ckpt, weights_only=True)["VideoDataModule"]["splits"]
    assert splits["test"] == ["test/left/left0.mp4", "test/right/right0.mp4"]
    assert sorted(splits["train"] + splits["val"]) == [
        f"train/{c}/{c}{i}.mp4" for c in ("left", "right") for i in range(3)
    ]
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(root), "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test/video_acc"] in (0.0, 0.5, 1.0)  # two test videos, from test/
    main(["predict", "--ckpt", str(ckpt), "--input", str(root / "test" / "left"), "--out", str(tmp_path / "out")])
    (line,) = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert line["class"] in ("left", "right")


def test_video_accuracy_averages_clips_and_counts_repeats_once():
    metric = VideoAccuracy()

    def update(logits, videos, clips):  # every clip of class 0
        labels = torch.zeros(len(clips), dtype=torch.long)
        metric.update(torch.tensor(logits), labels, torch.tensor(videos), torch.tensor(clips))

    # video 0: one confident right clip outweighs two unsure wrong ones (a vote would not)
    update([[5.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [0, 0, 0], [0, 1, 2])
    # video 1: clip 3 (right, p=0.88) and clip 4 (wrong, p=0.73) average to right; clip 4 served
    # again in a later batch (a DistributedSampler pads ranks so) and counted twice would flip it
    update([[2.0, 0.0], [0.0, 1.0]], [1, 1], [3, 4])
    update([[0.0, 1.0]], [1], [4])
    assert metric.compute().item() == 1.0
    # synchronised over DDP ranks, each list state arrives as one tensor
    for name in ("probs", "labels", "videos", "clips"):
        setattr(metric, name, torch.cat(getattr(metric, name)))
    metric._computed = None
    assert metric.compute().item() == 1.0


@pytest.mark.parametrize(
    "backbone, kwargs, spatial_dims",
    [
        ("convnet2plus1d", {"channels": [8, 16]}, 3),
        ("pytorchvideo_resnet", {"model_depth": 50, "stem_dim_out": 8}, 3),
        ("pytorchvideo_x3d", {"width_factor": 1.0, "depth_factor": 1.0}, 3),
        ("convnet", {"channels": [8, 16]}, 2),  # single-frame baseline: a 2D CNN per frame
    ],
)
def test_backbones_on_clips(backbone, kwargs, spatial_dims):
    model = VideoClassificationModule(
        num_classes=5, spatial_dims=spatial_dims, backbone=backbone, backbone_kwargs=kwargs
    )
    logits = model(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_the_single_frame_baseline_averages_the_logits_of_each_frame_alone():
    """``spatial_dims: 2`` runs the 2D network on every frame ``(N, C, H, W)`` of a clip
    ``(N, C, T, H, W)`` and averages the frames' logits: not their maximum, and not slices that
    mix the colour channels with time."""
    torch.manual_seed(0)
    model = VideoClassificationModule(
        num_classes=5, spatial_dims=2, backbone="convnet", backbone_kwargs={"channels": [8, 16]}
    ).eval()
    clips = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        frames = torch.stack([ClassificationModule.forward(model, clips[:, :, t]) for t in range(4)], dim=1)
        torch.testing.assert_close(model(clips), frames.mean(dim=1))


def test_a_predicted_video_is_the_mean_of_its_clips_probabilities():
    """A video's class and probabilities are its clips' softmax averaged, as ``video_acc``
    scores it: here its first clip leans to one class and the mean to the other."""
    model = VideoClassificationModule(num_classes=2, class_names=["left", "right"], backbone="convnet")
    logits = torch.tensor([[0.5, 0.0], [0.0, 4.0], [0.0, 3.0], [2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    sizes = [2, 1, 3]
    inputs = [
        Input(Path(f"v{i}.mp4"), torch.zeros(n, 3, 2, 4, 4), {"clip_starts": [float(k) for k in range(n)]})
        for i, n in enumerate(sizes)
    ]
    predictions = model.describe_outputs((logits,), inputs)
    for prediction, probs in zip(predictions, logits.softmax(1).split(sizes), strict=True):
        got = torch.tensor([prediction["probabilities"][c] for c in model.class_names])
        torch.testing.assert_close(got, probs.mean(0))
        assert len(prediction["clips"]) == len(probs)
    assert [p["class"] for p in predictions] == ["right", "right", "left"]


def test_video_scores_are_monitored_as_higher_is_better():
    """The video scores are no torchmetrics class with ``higher_is_better``: the task's own
    ``metric_modes`` is what makes a monitor of them keep the highest."""
    assert VideoClassificationModule.mode_of("val/video_acc") == "max"
    assert VideoClassificationModule.mode_of("val/video_map") == "max"


def write_bars_video(path: Path, steps: list[int], frames: int = 16, size: int = 16) -> None:
    """Vertical bars on black, one moving ``step`` pixels a frame for each of ``steps``, each in
    its own colour channel (so two bars crossing stay two)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.zeros((size, size, 3), np.uint8)
            for channel, step in enumerate(steps):
                image[:, (3 + 5 * channel + step * t) % size, channel] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_multilabel_video_folder(root: Path, count: int = 12) -> Path:
    """``clips/`` of 2-s videos whose actions are the bars' motions, ``left``, ``right`` or both,
    and ``labels.csv`` (``video,label``, ``a;b`` cells, as Charades lists several actions)."""
    (root / "clips").mkdir(parents=True)
    rows = ["video,label"]
    for index in range(count):
        labels = ["left", "right", "left;right"][index % 3]
        steps = [{"left": -1, "right": 1}[name] for name in labels.split(";")]
        write_bars_video(root / "clips" / f"v{index}.mp4", steps)
        rows.append(f"clips/v{index}.mp4,{labels}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_multilabel_labels_csv_trains_scores_videos_and_predicts(tmp_path):
    folder = make_multilabel_video_folder(tmp_path / "charades")
    dm = VideoDataModule(data_dir=str(folder), **SMALL)
    assert dm.multilabel and dm.class_names == ["left", "right"]
    dm.setup("fit")
    _, target, _, _ = dm.datasets["train"][0]
    assert target.dtype == np.float32 and target.shape == (2,)
    run = fit(tmp_path, "--data.data_dir", str(folder), "--data.frames_per_clip", "8", "--data.frame_size", "16",
              "--data.batch_size", "4", *QUARTERS, "--trainer.max_epochs", "1")  # fmt: skip
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/video_map"] <= 1.0 and "test/map_macro" in metrics and "test/video_acc" not in metrics
    assert (run / "evaluation" / "contact_sheet.png").stat().st_size > 0
    assert "val/video_map" in (run / "metrics.csv").read_text().splitlines()[0]

    # predict: a video's probabilities are its clips' sigmoids averaged, its labels those at
    # or above the checkpoint's thresholds
    ckpt = run / "checkpoints" / "best.ckpt"
    model, datamodule = rebuild(ckpt, data={"data_dir": folder})
    test = datamodule.datasets["test"]
    predictor = Predictor(ckpt, accelerator="cpu")
    predictions = predictor.predict([predictor.read(folder / video.id) for video in test.videos])
    for v, prediction in enumerate(predictions):
        clips = torch.stack([test[i][0] for i, (u, _) in enumerate(test.starts) if u == v])
        with torch.no_grad():
            expected = model(clips).sigmoid().mean(0)
        got = torch.tensor([prediction["probabilities"][c] for c in model.class_names])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        chosen = zip(model.class_names, expected, model.thresholds, strict=True)
        assert prediction["labels"] == [c for c, p, t in chosen if p >= t]
        assert [set(clip) for clip in prediction["clips"]] == [{"start", "labels"}] * 2


def test_video_average_precision_averages_clip_sigmoids_per_video():
    metric = VideoAveragePrecision()
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # class 1: video 1's clips average to 0.508, above video 0's 0.5, only when its clip 2, served
    # again (DDP padding), counts once (twice: 0.344, and class 1's AP falls to 0.5)
    logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, -4.0], [0.0, 6.0]])
    metric.update(logits, labels, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3]))
    metric.update(logits[2:3], labels[2:3], torch.tensor([1]), torch.tensor([2]))
    assert metric.compute().item() == 1.0


def test_video_average_precision_leaves_out_a_label_no_video_carries():
    """A label no test video carries has no average precision: the mean is over the others,
    as the clip-level ``map_macro`` takes it (torchmetrics would average it in as 0)."""
    metric = VideoAveragePrecision()
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    metric.update(
        torch.tensor([[3.0, -3.0, 0.0], [-3.0, 3.0, 0.0]]), labels, torch.tensor([0, 1]), torch.tensor([0, 1])
    )
    assert metric.compute().item() == 1.0


def test_video_average_precision_ranks_each_labels_sigmoid_not_a_softmax_over_labels():
    """Labels are not exclusive: video 1's second label (logit 0.5) ranks below video 0's
    (logit 1.0) on its own sigmoid, though a softmax against video 1's far lower first logit
    would rank it above."""
    metric = VideoAveragePrecision()
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    metric.update(torch.tensor([[0.0, 1.0], [-5.0, 0.5]]), labels, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert metric.compute().item() == 1.0


def write_paused_video(path: Path, fps: int = 8, pause: float = 2.0, before: int = 1) -> None:
    """A variable-rate video as screen recorders and webcams write one: ``before`` seconds of
    frames at ``fps`` (frame ``k`` bright in column ``k`` of 16), no frame for ``pause``
    seconds, then another second of frames; a key frame every second."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": str(fps), "keyint_min": str(fps)})
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        times = [k / fps for k in range(before * fps)] + [before + pause + k / fps for k in range(fps)]
        for k, t in enumerate(times):
            image = np.zeros((16, 16, 3), np.uint8)
            image[:, k % 16] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("cache_limit_mb", [1024, 0])  # videos decoded once and kept / a clip at a time
def test_a_clip_in_a_pause_of_a_variable_rate_video_holds_the_frame_shown(tmp_path, cache_limit_mb):
    """A video with no new frame for two seconds shows its last frame for them, as a player
    does: the clips of the pause hold it. They were refused as 'decoded 0 frames ... damaged or
    truncated video?', ending a run at the epoch whose random clip fell in the pause."""
    path = tmp_path / "paused.mp4"
    write_paused_video(path)
    dm = VideoDataModule(**SMALL, cache_limit_mb=cache_limit_mb)
    clips = dm.read_input(path).sample  # (clips, C, T, H, W): the uniform clips of 1 s
    assert len(clips) == 4
    for paused in clips[1], clips[2]:
        assert all(torch.equal(frame, clips[0, :, -1]) for frame in paused.unbind(1))
    assert not torch.equal(clips[3, :, 0], clips[0, :, -1])


def test_a_clip_in_a_pause_is_read_from_the_frames_around_it(tmp_path, monkeypatch):
    """A clip read from its file that falls in a pause decodes from the key frame before it to
    the first frame after it, not the whole video (as many times as the video has paused clips)."""
    from cnnsuite.tasks.video3d import readers

    path = tmp_path / "paused.mp4"
    write_paused_video(path, before=8)
    dm = VideoDataModule(**SMALL, cache_limit_mb=0)
    record = video_data.VideoRecord(path.name, 0, Fraction(11), 8.0, 16 * 16 * 3)
    clips = dm.clip_dataset(tmp_path, [record], "test", dm.memory_cache)
    converted = []
    monkeypatch.setattr(readers, "upright", lambda frame, r: converted.append(frame.pts) or upright(frame, r))
    paused, _, _ = clips.read(8)  # the clip of [8 s, 9 s): no frame comes in it
    last, _, _ = clips.read(7)
    assert all(torch.equal(frame, last[:, -1]) for frame in paused.unbind(1))
    assert 0 < len(converted) <= 3 * 8


def test_a_clip_past_the_frames_a_video_holds_is_refused_as_cut(tmp_path, video_folder):
    """A video whose frames end before the time it is said to last (a cut file) is still named."""
    dm = VideoDataModule(**SMALL)
    said = video_data.VideoRecord("left/left1.mp4", 0, Fraction(8), 8.0, 16 * 16 * 3)
    clips = dm.clip_dataset(video_folder, [said], "test", dm.memory_cache)
    with pytest.raises(
        BadFileError, match=r"left1.mp4: decoded 0 frames between 7.000 s and 8.000 s, expected about 8"
    ):
        clips.read(len(clips) - 1)


def test_a_video_named_without_its_ending_is_told_by_its_container(tmp_path):
    """serve names an upload without an ending the task takes (a browser's Blob is "blob") by
    its content: each container by its first bytes, under an ending the reader takes. A playlist
    (which FFmpeg, guessing from content, would follow to other files and URLs) or an image is
    no video."""
    dm = VideoDataModule(**SMALL)
    for suffix in sorted(CODECS):
        write_bar_video(tmp_path / f"v{suffix}", 8, 1)
        told = dm.content_suffix((tmp_path / f"v{suffix}").read_bytes())
        assert told in dm.input_extensions, suffix
        renamed = (tmp_path / f"v{suffix}").rename(tmp_path / f"blob-{suffix[1:]}{told}")
        assert dm.read_input(renamed).sample.shape[0] == 1  # one uniform clip of the one-second video
    assert dm.content_suffix(b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n") is None
    assert dm.content_suffix(b"\x89PNG\r\n\x1a\n" + bytes(32)) is None


def test_a_video_said_to_last_for_days_is_refused_before_its_clips_are_listed(tmp_path, video_folder, monkeypatch):
    """Every uniform clip of a video is listed and decoded (test split, predict, serve): a video
    whose header (or a prepared record's facts) says it lasts for days made predict and serve
    cut clips for hours. The clips' frames, as the model takes them, are held to the video
    limit before any is listed; a video of real length is not."""
    from cnnsuite.data.limits import ENV

    dm = VideoDataModule(data_dir=str(video_folder), **SMALL)
    long = video_data.VideoRecord("left/left1.mp4", 0, Fraction(4 * 10**5), 8.0, 16 * 16 * 3)
    monkeypatch.setenv(ENV, str(10**6))
    with pytest.raises(BadFileError, match=r"left1.mp4: lasts 400000 s: 400000 clips of 4 frames of 16x16 = "
                                           r"409,600,000 pixels, over the limit of 1,000,000"):  # fmt: skip
        dm.clip_dataset(video_folder, [long], "test", dm.memory_cache)
    real = video_data.VideoRecord("left/left1.mp4", 0, Fraction(2), 8.0, 16 * 16 * 3)
    assert len(dm.clip_dataset(video_folder, [real], "test", dm.memory_cache)) == 2


def test_a_video_whose_frames_change_size_part_way_is_named(tmp_path):
    """Two H.264 streams of 64x64 and 48x80 frames joined, as a recording of an adaptive stream
    is: stacking its frames failed with torch's 'stack expects each tensor to be equal size'."""
    import io

    def h264(width, height, shade):
        raw = io.BytesIO()
        with av.open(raw, "w", format="h264") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), shade, np.uint8), format="rgb24")
            for _ in range(10):
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        return raw.getvalue()

    (tmp_path / "joined.h264").write_bytes(h264(64, 64, 50) + h264(48, 80, 200))
    with av.open(str(tmp_path / "joined.h264")) as source, av.open(str(tmp_path / "joined.mkv"), "w") as joined:
        stream = joined.add_stream_from_template(source.streams.video[0])
        for index, packet in enumerate(p for p in source.demux(source.streams.video[0]) if p.size):
            packet.pts = packet.dts = index
            packet.time_base, packet.stream = Fraction(1, 25), stream
            joined.mux(packet)
    with pytest.raises(BadFileError, match=r"joined.mkv: its frames change size part-way \(64x64 then 48x80\)"):
        decode_video(tmp_path / "joined.mkv")
