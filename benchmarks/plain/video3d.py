"""video3d in plain PyTorch: the 3D CNN on clips decoded once and held in memory.

    python benchmarks/plain/video3d.py [--epochs 20] [--data_root data]

Every training video is decoded once into all its consecutive clips (the test split's
sampling: ``frames_per_clip`` frames per ``clip_duration``, shorter side resized and centre-
cropped to ``frame_size``). Each epoch draws ``train_clips_per_video`` of them per video (the
suite draws a clip at any start time, decoding it again) and a random resized crop per clip
(60–100 % of the area, resized back) on the batch. Scored per clip (``test/acc``) and per
video (``test/video_acc``, the clips' softmax averaged) with the module's torchmetrics.
"""

from __future__ import annotations

from pathlib import Path

import torch
from cnnsuite.tasks.video3d.module import VideoAccuracy
from common import (
    accuracy,
    fit,
    load,
    main,
    predict,
    resized_crop_thetas,
    warp,
)

TASK = "video3d"


def augment(clips: torch.Tensor, hflip: bool) -> torch.Tensor:
    """One random resized crop per clip, the same for all its frames (N, C, T, H, W)."""
    n, c, t, h, w = clips.shape
    thetas = resized_crop_thetas(n, scale=(0.6, 1.0), device=clips.device)
    cropped = warp(clips.reshape(n, c * t, h, w), thetas).view(n, c, t, h, w)
    if hflip:
        chosen = torch.rand(n, device=clips.device) < 0.5
        cropped[chosen] = cropped[chosen].flip(-1)
    return cropped


def run(epochs: int | None = None, data_root: str | Path = "data", seed: int = 0, limit_batches: int | None = None):
    loaded = load(TASK, epochs, data_root, seed)
    (clips, labels, videos, _), (test_clips, test_labels, test_videos, test_ids) = loaded.train, loaded.test
    model, hp = loaded.model, loaded.datamodule.hparams
    clips_of = [torch.nonzero(videos == v).flatten() for v in range(int(videos.max()) + 1)]

    def epoch_batches():
        drawn = torch.cat([c[torch.randint(len(c), (hp.train_clips_per_video,))] for c in clips_of if len(c)])
        for i in drawn[torch.randperm(len(drawn))].split(hp.batch_size):
            yield augment(clips[i], hp.hflip), labels[i]

    def loss_of(batch):
        return model.loss(model(batch[0]), batch[1])

    result = fit(loaded, epoch_batches, loss_of, limit_batches)
    logits, test_labels = predict(model, test_clips, hp.batch_size).float().cpu(), test_labels.cpu()
    video_acc = VideoAccuracy()
    video_acc.update(logits, test_labels, test_videos.cpu(), test_ids)
    return result | {
        "train_samples": len(clips_of),
        "train_clips_decoded": len(clips),
        "test/acc": accuracy(logits, test_labels),
        "test/video_acc": float(video_acc.compute()),
    }


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0])
