"""video3d's readers: a video probed (duration, rate, frame size within the limits) and decoded
with PyAV, each frame turned upright by its stream's display rotation as phones record it;
PyTorchVideo-style ``train.csv``/``val.csv``/``test.csv`` lists. Each failure names its file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import torch
from av.video.reformatter import VideoReformatter
from pytorchvideo.data.encoded_video import EncodedVideo
from pytorchvideo.data.utils import secs_to_pts

from cnnsuite.data import (
    BadFileError,
)
from cnnsuite.data.errors import check_not_empty
from cnnsuite.data.limits import check_size, max_pixels
from cnnsuite.data.splits import STAGES, check_lists_present
from cnnsuite.data.textfiles import read_lines
from cnnsuite.errors import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
#: the first bytes of each container (ISO media's box type at 4, RIFF's form type at 8, EBML's
#: magic) and the endings it goes by
CONTAINER_MAGIC = ((4, b"ftyp", (".mp4", ".mov", ".m4v")), (8, b"AVI ", (".avi",)),
                   (0, b"\x1a\x45\xdf\xa3", (".mkv", ".webm")))  # fmt: skip


#: timestamps (in the stream's time base) to seek before a clip's start, as PyTorchVideo does
SEEK_MARGIN = 1024


@dataclass(frozen=True)
class DecodedVideo:
    """The frames of a video (all of them, kept for every clip of the video, or one clip's)
    with their presentation times, as :func:`decode_video` gives them."""

    frames: torch.Tensor  # (T, H, W, C) uint8, in presentation order
    pts: torch.Tensor  # (T,) int64, in the stream's time base
    time_base: Fraction
    start_pts: int

    def as_item(self) -> dict:
        """Tensors and integers (the time base as numerator and denominator): what a prepared
        folder's shards hold of the video, given back by :meth:`from_item`."""
        base = self.time_base
        return {"frames": self.frames, "pts": self.pts, "time_base": [base.numerator, base.denominator],
                "start_pts": self.start_pts}  # fmt: skip

    @classmethod
    def from_item(cls, item: dict) -> DecodedVideo:
        return cls(item["frames"], item["pts"], Fraction(*item["time_base"]), int(item["start_pts"]))

    def get_clip(self, start: Fraction, end: Fraction) -> torch.Tensor | None:
        """The frames in ``[start, end)`` seconds as a ``(C, T, H, W)`` uint8 view of the kept
        frames (no copy: a loader cuts one from the cache for every clip it reads), or None
        when there are none: the same frames, chosen by the same rounding of seconds to
        timestamps, as ``EncodedVideoPyAV.get_clip`` (which gives them as float)."""
        bounds = [secs_to_pts(t, self.time_base, self.start_pts, round_mode="ceil") for t in (start, end)]
        first, last = torch.searchsorted(self.pts, torch.tensor(bounds)).tolist()  # pts are in order
        return self.frames[first:last].permute(3, 0, 1, 2) if last > first else None

    def shown(self, start: Fraction, end: Fraction, slots: int) -> torch.Tensor:
        """The frames a player shows at ``slots`` times evenly spaced over ``[start, end)``, each
        the last whose timestamp is not after it (the first frame before any), ``(C, slots, H,
        W)``: a clip in a pause of a variable-rate video, where no new frame comes, holds the
        frame shown when the pause began."""
        times = [start + (end - start) * k / slots for k in range(slots)]
        at = torch.tensor([secs_to_pts(t, self.time_base, self.start_pts, round_mode="floor") for t in times])
        index = (torch.searchsorted(self.pts, at, right=True) - 1).clamp(min=0)
        return self.frames[index].permute(3, 0, 1, 2)

    def holds_before(self, start: Fraction) -> bool:
        """Whether a frame at or before ``start`` seconds is kept: the frame a player shows then."""
        bound = secs_to_pts(start, self.time_base, self.start_pts, round_mode="floor")
        return bool(len(self.pts)) and int(self.pts[0]) <= bound

    def goes_on_after(self, end: Fraction) -> bool:
        """Whether a frame comes at or after ``end`` seconds: a clip without its frames before
        then lies in a pause of the video, not past the end of a cut file."""
        bound = secs_to_pts(end, self.time_base, self.start_pts, round_mode="ceil")
        return bool(len(self.pts)) and int(self.pts[-1]) >= bound


def video_suffix(data: bytes, suffixes: tuple[str, ...]) -> str | None:
    """The first of ``suffixes`` of the container ``data`` is in, told from its first bytes
    (:data:`CONTAINER_MAGIC`), or None: an upload named without its ending is still the video
    it is. Nothing is handed to FFmpeg to guess: by content it would also take a playlist that
    names other files and URLs to read."""
    for offset, magic, endings in CONTAINER_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return next((suffix for suffix in suffixes if suffix in endings), None)
    return None


def open_video(path: Path) -> EncodedVideo:
    """PyTorchVideo's PyAV reader, audio off; a file it cannot open is named."""
    check_not_empty(path, "a video")
    try:
        return EncodedVideo.from_path(str(path), decode_audio=False, decoder="pyav")
    except Exception as err:  # PyTorchVideo wraps PyAV's errors in RuntimeError; stay broad
        raise BadFileError(f"{path}: cannot open as a video ({err})") from None


def check_declared_size(path: Path) -> None:
    """Refuse a video whose header declares more frames × width × height than
    :mod:`cnnsuite.data.limits` allows, before anything decodes it (PyTorchVideo decodes a
    whole video whose header has no duration, to measure it). The frame count is the
    stream's, else its duration × frame rate, else its packets counted (read, not decoded).
    A file PyAV cannot open passes: :func:`open_video` names it."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            width, height, frames = stream.codec_context.width, stream.codec_context.height, stream.frames
            if not frames:
                seconds = Fraction(container.duration or 0, av.time_base)
                if stream.duration:
                    seconds = stream.duration * stream.time_base
                rate = stream.average_rate or stream.guessed_rate
                if seconds and rate:
                    frames = math.ceil(seconds * rate)
                else:
                    frames = sum(1 for packet in container.demux(stream) if packet.size)
    except (av.FFmpegError, IndexError, ValueError, OSError):
        return
    check_size(path, "video", (frames, width, height), f"declares {frames} frames of {width}x{height}")


def probe_video(path: Path) -> tuple[Fraction, float, int]:
    """``(duration in seconds, frames per second, bytes of one decoded RGB frame)`` of a video
    with a decodable frame; otherwise :class:`BadFileError` naming the file. Decodes only the
    first frame, after :func:`check_declared_size`."""
    check_declared_size(path)
    video = open_video(path)
    try:
        duration = Fraction(video.duration)
    except (AttributeError, TypeError, ValueError):
        raise BadFileError(f"{path}: the video has no duration (no decodable frames?)") from None
    finally:
        video.close()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frame = next(container.decode(stream))
            start = (stream.start_time or 0) * Fraction(stream.time_base)
            if stream.duration is not None:
                # a length (MP4, AVI), which PyTorchVideo takes for the last timestamp and measures
                # from the first: a 3-s MP4 whose first frame is stamped 1 s would last 2 s
                duration = stream.duration * Fraction(stream.time_base)
            elif container.duration:
                # PyTorchVideo then measures up to the last frame's start, one frame short (a 2-s
                # MKV or WebM would lose its second clip); the container's duration is the end,
                # counted from 0 and not from the first frame
                duration = max(duration, Fraction(container.duration, av.time_base) - start)
            elif duration > 0 and stream.average_rate:  # muxed as recorded (a browser's WebM): the
                # last frame lasts too; a still image's one frame (0 s) stays what it is
                duration += 1 / Fraction(stream.average_rate)
    except (av.FFmpegError, IndexError, StopIteration, ValueError) as err:
        raise BadFileError(f"{path}: cannot decode a video frame ({type(err).__name__}: {err})") from None
    if duration <= 0:  # FFmpeg opens a still image (PNG, JPEG) as a "video" of one frame that lasts 0 s
        raise BadFileError(f"{path}: lasts 0 s: a still image ({container.format.name}), not a video")
    return duration, fps, frame.width * frame.height * 3


def upright(frame: av.VideoFrame, reformatter: VideoReformatter) -> torch.Tensor:
    """A decoded frame as ``(H, W, 3)`` uint8 RGB, turned the way a player shows it. Phones
    store a video sideways and write the turn into the stream's display matrix; PyAV's
    ``to_ndarray`` (and PyTorchVideo, which calls it) ignores the matrix, so a model would see
    rightward motion as upward. ``frame.rotation`` is the matrix's counter-clockwise turn.

    The conversion to RGB is ``frame.to_rgb()``'s, through a ``reformatter`` kept for the whole
    video: ``to_rgb`` makes a new one, and with it a new swscale context, for every frame, which
    costs small frames more than their decoding."""
    pixels = torch.from_numpy(reformatter.reformat(frame, format="rgb24").to_ndarray())
    return torch.rot90(pixels, round(frame.rotation / 90) % 4, dims=(0, 1))


def decode_video(
    path: Path, start: Fraction | None = None, end: Fraction | None = None, around: bool = False
) -> DecodedVideo:
    """The frames of the video at ``path`` in ``[start, end)`` seconds (default: all of them),
    decoded with PyAV to RGB, upright (:func:`upright`), one frame per timestamp: every video
    frame training, evaluation, prediction and serving see comes from here. A time range is
    decoded as PyTorchVideo's ``EncodedVideoPyAV`` decodes a clip: a seek to the key frame
    before it, then frames up to its end. ``around`` keeps too the last frame decoded before
    ``start`` and the first at or after ``end``: what a player shows in a pause of a
    variable-rate video, and whether the video goes on after it. A file that fails part-way is
    named, and one that holds more frames than its header declared stops at the pixel limit."""
    frames: dict[int, torch.Tensor] = {}
    before = None  # the last frame decoded before the range, for ``around``
    limit, pixels, reformatter = max_pixels("video"), 0, VideoReformatter()

    def keep(frame: av.VideoFrame) -> bool:
        """Keep ``frame`` unless it takes the frames past the pixel limit."""
        nonlocal pixels
        pixels += frame.width * frame.height
        if pixels <= limit:
            frames[frame.pts] = upright(frame, reformatter)
        return pixels <= limit

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            time_base, start_pts = Fraction(stream.time_base), stream.start_time or 0
            first, last = (
                bound if t is None else secs_to_pts(t, time_base, start_pts, round_mode="ceil")
                for t, bound in ((start, -math.inf), (end, math.inf))
            )
            if start is not None:  # seeking is imprecise: PyTorchVideo's margin before the start
                container.seek(max(first - SEEK_MARGIN, 0), any_frame=False, backward=True, stream=stream)
            for frame in container.decode(stream):
                if frame.pts < first:
                    before = frame if around else None
                    continue
                if frame.pts >= last and not around:
                    break
                held, before = before, None
                if (held is not None and not keep(held)) or not keep(frame) or frame.pts >= last:
                    break
            if before is not None:  # no frame at or after the start: a pause to the end, or a cut file
                keep(before)
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise BadFileError(f"{path}: cannot decode the video ({type(err).__name__}: {err})") from None
    if pixels > limit:
        what = f"decodes to {len(frames) + 1} frames of {frame.width}x{frame.height} before its end"
        check_size(path, "video", [pixels], what)
    if not frames and start is None:
        raise BadFileError(f"{path}: no decodable video frames")
    order = sorted(frames)
    sizes = list(dict.fromkeys(tuple(frames[p].shape[:2]) for p in order))
    if len(sizes) > 1:  # a stream whose resolution changes part-way (an adaptive stream's recording)
        changes = " then ".join(f"{w}x{h}" for h, w in sizes[:3])
        raise BadFileError(f"{path}: its frames change size part-way ({changes}); expected one frame size")
    stacked = torch.stack([frames[p] for p in order]) if frames else torch.empty(0, 0, 0, 3, dtype=torch.uint8)
    return DecodedVideo(stacked, torch.tensor(order, dtype=torch.int64), time_base, start_pts)


def read_csv_lists(root: Path, class_names: list[str], known: set[str]) -> dict[str, list[str]] | None:
    """``train.csv``, ``val.csv`` and ``test.csv`` in ``root`` (all three, train and test, or none), in
    PyTorchVideo's ``LabeledVideoPaths`` format: ``<path> [<integer label>]`` a line, the path
    relative to ``root``. The class is the path's folder; a label column, if given, must name
    the folders consistently (0- or 1-based numbering alike, as in UCF101's lists). Every
    line's problem — a path outside ``root`` or its class folders, a label that contradicts
    earlier lines, a video not among ``known`` (the folder's) — is named in one error. ``.txt``
    split lists beside them are refused, naming both kinds."""
    files = {stage: root / f"{stage}.csv" for stage in STAGES}
    present = check_lists_present(root, {s: f.is_file() for s, f in files.items()}, ".csv ")
    if present is None:
        return None
    texts = [f"{s}.txt" for s in STAGES if (root / f"{s}.txt").is_file()]
    if texts:  # every other task's kind, read where there are no .csv lists: which one is meant is not guessed
        raise ConfigError(
            f"{root}: holds split lists of two kinds, .csv ({', '.join(f'{s}.csv' for s in present)}) and .txt "
            f"({', '.join(texts)}); expected one kind (remove the lists not meant)"
        )
    splits, folder_of, label_of, problems = {}, {}, {}, []
    for stage, file in ((s, files[s]) for s in present):
        ids = []
        for number, line in enumerate(read_lines(file), 1):
            if not line:
                continue
            # as PyTorchVideo's LabeledVideoPaths.from_csv: the last token is the label, if any
            # (-1, its "no label", is ignored like a missing one)
            parts = line.rsplit(None, 1)
            path, label = (parts[0], parts[1]) if len(parts) == 2 and parts[1].lstrip("-").isdigit() else (line, None)
            label = None if label == "-1" else label
            path = Path(path.strip())
            where = f"{file}, line {number}"
            if path.is_absolute():
                try:
                    path = path.relative_to(root)
                except ValueError:
                    problems.append(f"{where}: {path} is not inside {root}")
                    continue
            sample_id = path.as_posix()
            folder = sample_id.split("/")[0]
            if folder not in class_names:
                problems.append(f"{where}: {sample_id} is not in a class folder of {root}")
                continue
            if label is not None and (folder_of.setdefault(label, folder), label_of.setdefault(folder, label)) != (
                folder,
                label,
            ):
                problems.append(
                    f"{where}: label {label} for folder {folder!r} contradicts earlier lines "
                    f"(label {label} was {folder_of[label]!r}, {folder!r} was label {label_of[folder]})"
                )
            if sample_id not in known:
                problems.append(f"{where}: {sample_id} is not a video of the class folders of {root}")
            ids.append(sample_id)
        splits[stage] = ids
    if problems:
        listing = "\n".join(f"  {problem}" for problem in problems)
        counted = f"{len(problems)} problems" if len(problems) > 1 else "a problem"
        raise ConfigError(f"{counted} in the split lists of {root}:\n{listing}")
    return splits
