"""Where video3d's clips come from: a class-folder layout of videos, ``<class>/<video>.mp4``,
or Kinetics' split folders of them, ``train/<class>/<video>.mp4``, ``val/<class>/…``, or a
``labels.csv`` beside the videos (columns ``video,label``, or ``video`` and one 0/1 column per
class), where a video may carry several labels (``a;b``: Charades-style actions).

The layouts of UCF101 and Kinetics. Videos are measured with PyTorchVideo's PyAV reader
(``EncodedVideo``, audio off), their frames decoded with PyAV the way that reader decodes a
clip, but upright: turned by the display-matrix rotation phones write (:func:`upright`), in
every path that reads a video. They are cut into clips by PyTorchVideo's clip samplers: one random
clip per video per epoch for training (``RandomClipSampler``), every consecutive clip of
every video for validation and testing (``UniformClipSampler``). Each clip is
``clip_duration`` seconds, brought to ``frames_per_clip`` frames by uniform temporal
subsampling, resized and centre-cropped with ``torchvision.transforms.v2`` as a
``tv_tensors.Video``; training's random resized crops are drawn per clip but made on the
batch, after it reached the model's device.
A video shorter than one clip is valid data (UCF101 mixes lengths): its one clip is the whole
video, sampled at its own pace with its last frame held (index clamping, as PySlowFast does).

Items are ``(clip (C, T, H, W) float, target, video index, clip index)``: channels first,
time second, the ``(N, C, T, H, W)`` layout of ``Conv3d`` and of PyTorchVideo's models.

Why a map-style dataset and not PyTorchVideo's ``LabeledVideoDataset``: that dataset is an
``IterableDataset`` that shards videos between DataLoader workers itself and batches within
each worker, so (1) it has no length, and any length one gives it is wrong with
``num_workers > 0`` (each worker ends on its own partial batch; Lightning stops an epoch
after ``len(dataloader)`` batches, losing clips); (2) Lightning cannot put a
``DistributedSampler`` in it, so under DDP every rank sees every video; (3) with persistent
workers it repeats the same video order every epoch; (4) it skips files it cannot decode
with only a debug log, and returns short clips silently. Here every clip of an epoch is an
index, so DataLoader workers, DDP and ``len`` are all exact, and every file is checked at
setup and every bad one named. Clip sampling is PyTorchVideo's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from pytorchvideo.data.clip_sampling import RandomClipSampler, UniformClipSampler
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cnnsuite.data import (
    BadFileError,
    Input,
    TaskDataModule,
    check_folder,
    collect_bad,
    image_channel_names,
)
from cnnsuite.data.augment import BatchRandomResizedCrop
from cnnsuite.data.limits import check_size
from cnnsuite.errors import ConfigError

from .default_data import FPS, FRAMES, MOTIONS, write_motion_dataset
from .readers import (
    VIDEO_EXTENSIONS,
    DecodedVideo,
    decode_video,
    probe_video,
    read_csv_lists,
    video_suffix,
)

# Kinetics' statistics, as PyTorchVideo's recipes use them.
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
DEFAULT_VIDEOS_PER_CLASS = 50
DEFAULT_SEED = 20260104
#: the most clips ``train_clips_per_video`` draws from each video an epoch
MAX_TRAIN_CLIPS = 1000


@dataclass(frozen=True)
class VideoRecord:
    """A video that passed the checks at setup."""

    id: str  # relative path, as split lists hold it
    label: object  # class index, or a multi-hot vector (numpy float32) for a multi-label run
    duration: Fraction  # seconds, as PyTorchVideo measures it
    fps: float
    frame_bytes: int  # one decoded RGB frame: height x width x 3


def uniform_clips(duration: Fraction, clip_duration: Fraction) -> list[Fraction]:
    """Start times of PyTorchVideo's uniform clips of a video: consecutive, none past the end."""
    sampler, starts, last_end = UniformClipSampler(clip_duration), [], Fraction(0)
    while True:
        info = sampler(last_end, duration, {})
        starts.append(Fraction(info.clip_start_sec))
        last_end = info.clip_end_sec
        if info.is_last_clip:
            return starts


def temporal_subsample(frames: torch.Tensor, count: int, span: int | None = None) -> torch.Tensor:
    """``count`` frames evenly spaced over ``span`` frame slots (default: the frames there are)
    of the clip's ``(C, T, H, W)`` time axis, first and last kept, as PyTorchVideo's
    ``UniformTemporalSubsample`` does. Slots past the last frame repeat it (index clamping, as
    PySlowFast's ``temporal_sampling``): a video shorter than its clip keeps its own pace,
    rather than being stretched to look slower than the videos of its class."""
    span = frames.shape[1] if span is None else span
    return frames.index_select(1, subsample_index(count, span, frames.shape[1]))


@functools.lru_cache(maxsize=256)
def subsample_index(count: int, span: int, length: int) -> torch.Tensor:
    """The frame indices :func:`temporal_subsample` keeps, made once per clip shape: a loader
    asks for the same few shapes at every clip it reads."""
    return torch.linspace(0, span - 1, count).round().long().clamp(max=length - 1)


class ClipTransform:
    """``(C, T, H, W)`` uint8 frames → shorter side resized to ``frame_size``, centre
    crop, normalised: ``(C, T, frame_size, frame_size)``, through ``transforms.v2`` as a
    ``tv_tensors.Video`` ``(T, C, H, W)``. Every split's clips; training's random crops are
    made afterwards on whole batches (:meth:`VideoDataModule.augment_batch`)."""

    def __init__(self, frame_size: int) -> None:
        self.transform = v2.Compose([
            v2.Resize(frame_size, antialias=True), v2.CenterCrop(frame_size),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
        ])  # fmt: skip

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """One clip ``(C, T, H, W)`` or a batch of clips of one size ``(N, C, T, H, W)``."""
        video = tv_tensors.Video(frames.transpose(-4, -3))
        return self.transform(video).transpose(-4, -3).contiguous().as_subclass(torch.Tensor)


class ClipDataset(Dataset):
    """One item per clip of an epoch: ``(clip, label, video index, clip index)``.

    ``starts`` holds ``(video index, start time)``; a start of ``None`` means "a random
    clip of that video, drawn by PyTorchVideo's ``RandomClipSampler`` when read". Whole
    decoded videos are kept in ``cache`` (the datamodule's
    :meth:`~cnnsuite.data.TaskDataModule.decoded_cache`): in memory when all of them fit in
    ``cache_limit_mb`` (see :mod:`cnnsuite.data.cache`), or read from the shards of a prepared
    folder; clips are then cut from the kept frames, so the random clip of each epoch and its
    random crop still differ every epoch. Otherwise each clip is decoded from its file when read.
    """

    def __init__(
        self,
        root: Path,
        videos: list[VideoRecord],
        starts: list[tuple[int, Fraction | None]],
        clip_duration: Fraction,
        frames_per_clip: int,
        transform,
        cache,
    ) -> None:
        self.root, self.videos, self.starts = root, videos, starts
        self.clip_duration, self.frames_per_clip, self.transform = clip_duration, frames_per_clip, transform
        self.random_clips = RandomClipSampler(clip_duration)
        nbytes = sum(round(float(v.duration) * v.fps) * v.frame_bytes for v in videos)
        what = f"{root}: {len(videos)} videos"
        self.decoded = cache(self.decode, [v.id for v in videos], nbytes, what)

    def decode(self, video_index: int) -> dict:
        """The whole video, as its cache keeps it (:meth:`DecodedVideo.as_item`)."""
        return decode_video(self.root / self.videos[video_index].id).as_item()

    def __len__(self) -> int:
        return len(self.starts)

    def read(self, index: int) -> tuple[torch.Tensor, object, int]:
        """The raw clip ``(C, frames_per_clip, H, W)`` uint8, its target and video index."""
        video_index, start = self.starts[index]
        record = self.videos[video_index]
        path = self.root / record.id
        if start is None:
            start = Fraction(self.random_clips(0, record.duration, {}).clip_start_sec)
        end = start + self.clip_duration
        cached = self.decoded.cached
        video = DecodedVideo.from_item(self.decoded[video_index]) if cached else decode_video(path, start, end)
        frames = video.get_clip(start, end)
        # what the video holds of the clip: a video shorter than one clip ends inside it
        expected = float(min(end, record.duration) - start) * record.fps

        def short(frames: torch.Tensor | None) -> bool:
            return frames is None or frames.shape[1] < max(1.0, expected / 2)

        if short(frames) and not cached:
            # a pause of a variable-rate video (the frames around the clip tell what is shown),
            # a seek that found a key frame past the start (it does across a pause in some MP4s)
            # or a cut file: then the whole video tells which
            video = decode_video(path, start, end, around=True)
            if not video.holds_before(start):
                video = decode_video(path)
            frames = video.get_clip(start, end)
        if short(frames):
            if not video.goes_on_after(end):
                got = 0 if frames is None else frames.shape[1]
                raise BadFileError(
                    f"{path}: decoded {got} frames between {float(start):.3f} s and {float(end):.3f} s, "
                    f"expected about {expected:.0f} (damaged or truncated video?)"
                )
            # a pause of a variable-rate video: the frames shown at the clip's frame times
            frames = video.shown(start, end, max(1, round(float(self.clip_duration) * record.fps)))
        span = frames.shape[1]
        if end > record.duration:  # the clip's frame slots at the video's rate, the last frame held
            span = max(span, round(float(self.clip_duration) * record.fps))
        return temporal_subsample(frames, self.frames_per_clip, span), record.label, video_index

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, object, int, int]]:
        """The clips of ``indices`` (PyTorch's batched fetch): transformed together when their
        frames are all of one size, each on its own otherwise (videos of several sizes)."""
        reads = [self.read(i) for i in indices]
        frames = [f for f, _, _ in reads]
        if all(f.shape == frames[0].shape for f in frames):
            clips = self.transform(torch.stack(frames))
        else:
            clips = [self.transform(f) for f in frames]
        return [(clip, label, video, i) for clip, (_, label, video), i in zip(clips, reads, indices, strict=True)]


class VideoDataModule(TaskDataModule):
    """Class-folder videos → loaders of clips ``(B, C, T, H, W)``.

    - ``cache_limit_mb``: a split whose decoded frames fit is decoded once and kept in memory
      (:mod:`cnnsuite.data.cache`); clips and crops are still drawn afresh every epoch.
    - ``clip_duration`` seconds per clip, ``frames_per_clip`` frames sampled evenly in it,
      frames resized and cropped to ``frame_size``; ``train_clips_per_video`` random clips of
      each video per training epoch. The test split (and prediction) scores every uniform clip
      of a video, and so does validation by default (``val_clips: all``); ``val_clips: one``
      scores only each video's middle clip (PySlowFast's single validation view), for videos
      long enough that validating every clip each epoch costs more than it tells (what it
      picked on the embedded videos: benchmarks/results/history-video3d.md).
    - ``augment``: random resized crops (one per clip, of its resized and centre-cropped
      frames, made on the batch after the transfer) in training; ``hflip`` adds horizontal
      flips — off by default, since flipping turns "left" into "right".
    - ``on_bad_file``: every video of the run is opened at setup and its first frame decoded;
      unreadable or empty videos stop the run with one error listing them all (``error``), or
      are left out with one warning listing them (``skip``). A video shorter than one clip is
      not bad: its clip is the whole video, last frame held (see :func:`temporal_subsample`),
      and setup says once how many there are.
    - Splits: Kinetics' ``train/<class>/``, ``val/<class>/`` (and ``test/<class>/``) folders
      (:mod:`cnnsuite.data.splitfolders`), else ``train.csv``/``val.csv``/``test.csv`` in
      ``data_dir`` (PyTorchVideo's ``<path> [<label>]`` lines; ``.txt`` lists beside them are
      refused), else ``train.txt``/``val.txt``/``test.txt``, else stratified by ``seed``.
    - Labels: the class folders, or ``data_dir/labels.csv`` when there is one (its videos need
      no class folders; its split comes from ``train.txt``... or the seed). ``multilabel``:
      ``auto`` trains multi-label when some row holds several labels, ``true`` always
      (targets become multi-hot vectors), ``false`` never.
    """

    default_name = "video3d"
    sample_noun = "videos"
    pixel_kind = "video"
    input_extensions = VIDEO_EXTENSIONS
    streams_prepared = True
    # a prepared folder holds whole decoded videos: clips and frames are cut from them
    after_decoding_hparams = ("batch_size", "augment", "hflip", "clip_duration", "frames_per_clip", "frame_size",
                              "train_clips_per_video", "val_clips")  # fmt: skip

    def __init__(
        self,
        clip_duration: float = 1.0,
        frames_per_clip: int = 8,
        frame_size: int = 32,
        train_clips_per_video: int = 1,
        val_clips: Literal["one", "all"] = "all",
        augment: bool = True,
        hflip: bool = False,
        cache_limit_mb: float = 1024,
        on_bad_file: str = "error",
        batch_size: int = 16,
        multilabel: Literal["auto"] | bool = "auto",
        **kwargs,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        data_dir = self.raw_data_dir
        if val_clips not in ("one", "all"):
            raise ConfigError(f"data.val_clips={val_clips!r}: expected 'one' (each video's middle clip) or 'all'")
        if not clip_duration > 0:
            raise ConfigError(f"data.clip_duration={clip_duration}: expected a positive number of seconds")
        for key, value in (
            ("frames_per_clip", frames_per_clip),
            ("frame_size", frame_size),
            ("train_clips_per_video", train_clips_per_video),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key}={value}: expected a positive integer")
        # an epoch lists its clips up front: a checkpoint's (a resumed run's) count must not size that list at will
        if train_clips_per_video > MAX_TRAIN_CLIPS:
            raise ConfigError(
                f"data.train_clips_per_video={train_clips_per_video}: expected at most {MAX_TRAIN_CLIPS} clips drawn "
                "from each video an epoch"
            )
        # Exact seconds: 1/3 s as a float would drift against frame timestamps.
        self.clip_duration = Fraction(clip_duration).limit_denominator(100_000)
        #: ``(duration, fps, frame_bytes)`` of every usable video probed so far (:meth:`find_bad`), by id
        self.probed: dict[str, tuple[Fraction, float, int]] = {}
        if data_dir is None:
            self.class_names = list(MOTIONS)
            self.decide_multilabel(multilabel is True)
        else:
            root = check_folder(data_dir)
            self.read_labelled_folder(root, VIDEO_EXTENSIONS, "video", multilabel, "videos", name_bad=False)
        self.in_channels = 3  # PyAV decodes to RGB
        self.channel_names = image_channel_names(self.in_channels)
        self.use_prepared()
        if self.prepared is not None:  # probed when it was prepared: the record says what each video is
            try:
                self.probed = {
                    i: (Fraction(f["duration"]), float(f["fps"]), int(f["frame_bytes"]))
                    for i, f in self.prepared["sample_facts"].items()
                }
                unprobed = [i for ids in self.prepared["items"].values() for i in ids if i not in self.probed]
                if unprobed:
                    raise KeyError(unprobed[0])  # a video its datasets would know nothing of
            except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError) as err:
                raise ConfigError(
                    f"{self.hparams.data_dir}: its record's sample_facts are not what cnnsuite prepare writes "
                    f"(a duration, fps and frame_bytes for each sample: {type(err).__name__} {err}); "
                    "run cnnsuite prepare again"
                ) from None

    def sample_facts(self) -> dict[str, dict]:
        """Each usable video's duration (exact, as a fraction), frame rate and frame size."""
        return {
            i: {"duration": str(duration), "fps": fps, "frame_bytes": frame_bytes}
            for i, (duration, fps, frame_bytes) in self.probed.items()
        }

    @property
    def input_shape(self) -> tuple[int, ...]:
        hp = self.hparams
        return (self.in_channels, hp.frames_per_clip, hp.frame_size, hp.frame_size)

    def prepare_data(self) -> None:
        """The embedded default, whose videos are too short for a longer clip. Checked here, not
        at construction: a checkpoint of a run on the user's own videos (with longer clips)
        rebuilds its datamodule without data for prediction, and must not be refused."""
        clip_duration = self.hparams.clip_duration
        if self.hparams.data_dir is None and clip_duration > FRAMES / FPS:
            raise ConfigError(
                f"data.clip_duration={clip_duration}: the embedded videos are {FRAMES / FPS} s long; "
                "choose a shorter clip"
            )
        super().prepare_data()

    def write_default(self, folder: Path) -> None:
        write_motion_dataset(folder, DEFAULT_VIDEOS_PER_CLASS, DEFAULT_SEED)

    def list_samples(self) -> list[tuple[str, object]]:
        return self.folder_samples(VIDEO_EXTENSIONS)

    def decide_splits(self) -> dict[str, list[str]]:
        # PyTorchVideo's csv lists name class folders: not read beside split folders or a labels.csv
        labelled_otherwise = self.split_folders or self.targets is not None
        if self.hparams.data_dir is not None and not self.hparams.split_file and not labelled_otherwise:
            splits = read_csv_lists(self.root, self.class_names, {sample_id for sample_id, _ in self.samples()})
            if splits is not None:
                return self.listed_splits(splits, f"{self.root}/{{train,val,test}}.csv")
        return super().decide_splits()

    def find_bad(self, ids: list[str], decode: bool) -> dict[str, BadFileError]:
        """The videos of ``ids`` that cannot be used, each probed (opened, its first frame
        decoded) whether ``decode`` or not; what the others' probes found is kept
        (:attr:`probed`), and how many of them are shorter than one clip is said once."""

        def probe(sample_id: str) -> None:
            self.probed[sample_id] = probe_video(self.root / sample_id)

        bad = collect_bad(ids, probe)
        short = sum(self.probed[i][0] < self.clip_duration for i in ids if i not in bad)
        if short:
            rank_zero_warn(
                f"{self.root}: {short} of {len(ids) - len(bad)} videos are shorter than one clip "
                f"(data.clip_duration={float(self.clip_duration)} s); each gives one clip, "
                "its frames at their own pace and the last one repeated to fill it"
            )
        return bad

    def usable_videos(self, ids: list[str], stage: str | None = None) -> list[VideoRecord]:
        """The videos of ``ids`` that pass :meth:`check_samples`, with their targets and what
        their probes found."""
        targets = dict(self.samples())
        return [VideoRecord(i, targets[i], *self.probed[i]) for i in self.check_samples(ids, stage)]

    def make_dataset(self, ids: list[str], stage: str) -> Dataset:
        videos = self.usable_videos(ids, stage)
        if not videos:
            raise ConfigError(f"{self.root}: no readable video in the {stage} split ({len(ids)} listed)")
        return self.clip_dataset(self.root, videos, stage, self.decoded_cache(stage))

    def clip_dataset(self, root: Path, videos: list[VideoRecord], stage: str, cache) -> ClipDataset:
        """The clips of ``videos`` (ids relative to ``root``) as ``stage`` samples them: random
        ones for training, every uniform clip otherwise (the test split, one file read for
        prediction, and validation unless ``val_clips: one`` keeps each video's middle clip);
        ``cache`` keeps the decoded videos (see :class:`ClipDataset`)."""
        hp = self.hparams
        if stage == "train":
            starts = [(v, None) for v in range(len(videos)) for _ in range(hp.train_clips_per_video)]
        else:
            for rec in videos:  # before the clips are listed: one a clip_duration, however long it says it lasts
                count = math.ceil(rec.duration / self.clip_duration)
                check_size(root / rec.id, "video", (count * hp.frames_per_clip, hp.frame_size, hp.frame_size),
                           f"lasts {float(rec.duration):g} s: {count} clips of {hp.frames_per_clip} frames of "
                           f"{hp.frame_size}x{hp.frame_size}")  # fmt: skip
            views = [uniform_clips(rec.duration, self.clip_duration) for rec in videos]
            if stage == "val" and hp.val_clips == "one":
                views = [[clips[(len(clips) - 1) // 2]] for clips in views]
            starts = [(v, s) for v, clips in enumerate(views) for s in clips]
        transform = ClipTransform(hp.frame_size)
        return ClipDataset(root, videos, starts, self.clip_duration, hp.frames_per_clip, transform, cache)

    def augment_batch(self, batch: list) -> list:
        """Training's random resized crop, one per clip for all its frames (60–100 % of the
        frame's area, width/height 3/4–4/3, as ``v2.RandomResizedCrop`` draws it), with
        ``hflip`` a left-right flip of half the clips: on the batch of normalised clips where
        it is, on the accelerator when there is one (:class:`BatchRandomResizedCrop`)."""
        if not self.hparams.augment:
            return batch
        crops = BatchRandomResizedCrop(scale=(0.6, 1.0), hflip=self.hparams.hflip)
        return [crops(batch[0], self.augment_generator), *batch[1:]]

    @property
    def input_normalisation(self) -> dict:
        """Kinetics' RGB statistics, as PyTorchVideo's models take clips."""
        return {"mean": list(MEAN), "std": list(STD)}

    def describe_preprocessing(self) -> dict:
        hp = self.hparams
        return {
            "read": "decoded to RGB with PyAV, turned upright by the stream's display-matrix rotation "
            "(as phones record), audio ignored",
            "clips": f"consecutive clips of {float(self.clip_duration):g} s from the start (PyTorchVideo's "
            "UniformClipSampler, none past the end; a shorter video gives one clip, its last frame held)",
            "frames": f"{hp.frames_per_clip} frames evenly spaced in each clip, first and last kept",
            "resize": f"shorter side to {hp.frame_size} px (bilinear, antialiased), then a centre crop of "
            f"{hp.frame_size}x{hp.frame_size}",
            "scale": "to [0, 1]: values / 255",
            "normalisation": {"mean": list(MEAN), "std": list(STD), "formula": "(x - mean) / std, per channel"},
            "layout": "(C, T, H, W) per clip",
        }

    def content_suffix(self, data: bytes) -> str | None:
        """A video's ending from its container's first bytes (:func:`~.readers.video_suffix`)."""
        return video_suffix(data, self.input_extensions)

    def read_input(self, path: Path) -> Input:
        """Every uniform clip of the video, as the test split samples and transforms them:
        ``(clips, C, T, H, W)``; ``meta`` holds each clip's start in seconds. A file PyAV cannot
        open or decode raises :class:`BadFileError` naming it (from :func:`probe_video` and
        :meth:`ClipDataset.read`, as in training)."""
        duration, fps, frame_bytes = probe_video(path)
        record = VideoRecord(path.name, -1, duration, fps, frame_bytes)  # -1: no label
        clips = self.clip_dataset(path.parent, [record], "test", self.memory_cache)
        sample = torch.stack([clips[i][0] for i in range(len(clips))])
        starts = [float(start) for _, start in clips.starts]
        return Input(path, sample, {"duration": float(duration), "fps": fps, "clip_starts": starts})
