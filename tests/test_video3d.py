"""video3d: loaders of clips from tiny PyAV videos, worker sharding, CLI fit and evaluation, bad files."""

import json
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from cnnsuite.tasks.video3d import datamodule as video_data
from cnnsuite.tasks.video3d.datamodule import VideoDataModule
from cnnsuite.tasks.video3d.module import VideoAccuracy, VideoClassificationModule
from conftest import ROOT
from conftest import fit as run_fit

from cnnsuite.cli import main
from cnnsuite.data import BadFileError

CONFIG = str(ROOT / "tasks" / "video3d" / "config.yaml")
QUARTERS = ["--data.val_fraction", "0.25", "--data.test_fraction", "0.25"]
SMALL = {"frames_per_clip": 4, "frame_size": 16, "clip_duration": 1.0, "val_fraction": 0.25, "test_fraction": 0.25}


def write_bar_video(path: Path, frames: int, step: int, fps: int = 8, codec: str = "libx264", size: int = 16) -> None:
    """A bright vertical bar on black moving ``step`` pixels a frame (wrapping around)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.zeros((size, size, 3), np.uint8)
            image[:, (3 + step * t) % size] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_video_folder(root: Path, per_class: int = 4, frames: int = 16) -> Path:
    """``left/`` and ``right/``: 2-second videos at 8 fps (two 1-second clips each); one AVI."""
    for name, step in (("left", -1), ("right", 1)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            if i == 0:
                write_bar_video(root / name / f"{name}{i}.avi", frames, step, codec="mpeg4")
            else:
                write_bar_video(root / name / f"{name}{i}.mp4", frames, step)
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
    moves = torch.diff(raw.mean(dim=(0, 2)).argmax(dim=-1))  # (C, T, H, W) -> bar column per frame
    moves = moves % 16 if dm.class_names[label] == "right" else -moves % 16
    assert ((moves >= 1) & (moves <= 3)).all(), moves  # 8 frames subsampled to 4: 2 or 3 frames apart


def test_uniform_clips_cover_the_video_in_order(video_folder):
    dm = VideoDataModule(data_dir=str(video_folder), **{**SMALL, "frames_per_clip": 8})
    dm.setup("test")
    test = dm.datasets["test"]
    video = test.starts[0][0]
    first, second = (test.read(i)[0] for i, (v, _) in enumerate(test.starts) if v == video)
    columns = torch.cat([c.mean(dim=(0, 2)).argmax(dim=-1) for c in (first, second)])
    step = 1 if test.videos[video].label == 1 else 15
    assert (torch.diff(columns) % 16 == step).all(), columns  # 16 consecutive frames, none lost or repeated


def test_fit_evaluate_and_checkpoint_contract(tmp_path, video_folder):
    run = fit(
        tmp_path,
        "--data.data_dir", str(video_folder),
        "--data.frames_per_clip", "8",
        "--data.frame_size", "16",
        "--data.batch_size", "4",
        "--data.train_clips_per_video", "2",
        *QUARTERS,
        "--trainer.max_epochs", "1",
    )  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert (hparams["num_classes"], hparams["in_channels"], hparams["class_names"]) == (2, 3, ["left", "right"])
    main(["evaluate", "--ckpt", str(ckpt), "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/acc", "test/video_acc", "test/acc_macro", "test/auroc", "test/acc/left"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert {"confusion_matrix.png", "contact_sheet.png", "report.md"} <= {p.name for p in (tmp_path / "eval").iterdir()}
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["test"]) == 2 and not set(splits["test"]) & set(splits["train"])


def test_embedded_default_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.setattr(video_data, "DEFAULT_VIDEOS_PER_CLASS", 5)
    fractions = ["--data.val_fraction", "0.2", "--data.test_fraction", "0.2"]
    fit(tmp_path, "--trainer.fast_dev_run", "true", "--data.batch_size", "4", *fractions)
    default = tmp_path / "data" / "video3d"
    assert sorted(p.name for p in default.iterdir()) == sorted(VideoDataModule().class_names)
    assert len(list(default.glob("*/*.mp4"))) == 40
    stamp = default.stat().st_mtime_ns
    VideoDataModule(data_root=str(tmp_path / "data")).prepare_data()  # idempotent
    assert default.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.mp4", b"", "empty file"),
        ("garbage.mp4", b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50, "cannot open as a video"),
        ("short.mp4", None, "shorter than one clip"),
    ],
)
def test_bad_videos_are_named(video_folder, name, content, message):
    path = video_folder / "right" / name
    if content is None:
        write_bar_video(path, frames=4, step=1)  # 0.5 s: shorter than a 1-s clip
    else:
        path.write_bytes(content)
    dm = VideoDataModule(data_dir=str(video_folder), **SMALL)
    with pytest.raises(BadFileError, match=f"{name}.*{message}"):
        dm.setup("fit")

    skipping = VideoDataModule(data_dir=str(video_folder), on_bad_file="skip", **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skipping.setup("fit")
    assert any(name in str(w.message) for w in caught)
    assert sum(len(ds.videos) for ds in skipping.datasets.values()) == 8


def test_class_folder_without_videos_and_bad_keys(tmp_path, video_folder):
    (video_folder / "up").mkdir()
    (video_folder / "up" / "notes.txt").write_text("no videos here")
    with pytest.raises(ValueError, match="up: class folder holds no file"):
        VideoDataModule(data_dir=str(video_folder))
    with pytest.raises(FileNotFoundError, match="data.data_dir=.*nowhere"):
        VideoDataModule(data_dir=str(tmp_path / "nowhere"))
    for key, value in (("clip_duration", 0), ("frames_per_clip", 0), ("on_bad_file", "ignore")):
        with pytest.raises(ValueError, match=f"data.{key}"):
            VideoDataModule(**{key: value})
    with pytest.raises(ValueError, match="model.spatial_dims"):
        VideoClassificationModule(spatial_dims=1)


def test_clip_smaller_than_the_backbone_stride_is_named(tmp_path, video_folder):
    # the default backbone pools time 2x in each of 3 stages: 4 frames become 0
    with pytest.raises(ValueError, match="data.frames_per_clip=4.*smaller than the backbone's total stride 8x8x8"):
        fit(tmp_path, "--data.data_dir", str(video_folder), "--data.frames_per_clip", "4", *QUARTERS)


def test_csv_split_lists(video_folder):
    lists = {"train": ["left/left1.mp4 1", "right/right1.mp4 2", "left/left2.mp4 1", "right/right2.mp4 2"]}
    lists |= {"val": ["left/left3.mp4 1", "right/right3.mp4 2"], "test": ["left/left0.avi -1", "right/right0.avi"]}
    for stage, lines in lists.items():
        (video_folder / f"{stage}.csv").write_text("\n".join(lines) + "\n")
    dm = VideoDataModule(data_dir=str(video_folder), **SMALL)
    dm.setup("fit")
    assert dm.splits["test"] == ["left/left0.avi", "right/right0.avi"]
    assert [v.label for v in dm.datasets["train"].videos] == [0, 1, 0, 1]

    (video_folder / "val.csv").write_text("left/left3.mp4 1\nright/right3.mp4 1\n")
    with pytest.raises(ValueError, match="val.csv, line 2: label 1 for folder 'right'"):
        VideoDataModule(data_dir=str(video_folder), **SMALL).setup("fit")


def test_video_accuracy_averages_clips_and_counts_repeats_once():
    metric = VideoAccuracy()
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 5.0], [0.0, 5.0]])
    # video 0 (class 0): one confident right clip outweighs two unsure wrong ones;
    # video 1 (class 0): one wrong clip, served twice (as DDP padding does), counted once.
    metric.update(logits[:3], torch.tensor([0, 0, 0]), torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]))
    metric.update(logits[3:], torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([3, 3]))
    assert metric.compute().item() == 0.5


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
