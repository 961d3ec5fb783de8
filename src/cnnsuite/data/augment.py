"""Augmentation of a whole batch at once, random per sample.

``transforms.v2.RandomAffine`` draws one affine map per call and warps one image; on small
images its per-call overhead is most of a loader's time. Here a batch
of ``N`` images gets ``N`` independent random maps, applied by one ``affine_grid`` +
``grid_sample``: the same family of transformations, drawn the same way per sample, at a
fraction of the cost. A datamodule applies it in its ``augment_batch``, after Lightning moved
the batch to the model's device (:meth:`~cnnsuite.data.TaskDataModule.on_after_batch_transfer`):
the warp runs there, on the accelerator when there is one, while the few random numbers are
drawn on the CPU from its generator (whose state a checkpoint carries), whatever the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resample(images: torch.Tensor, theta: torch.Tensor, **options) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` read where the ``(N, 2, 3)`` float maps ``theta`` say
    (``affine_grid`` + ``grid_sample``, ``align_corners=False``), in their own dtype. Images of
    less than float32's precision (a ``bf16-true`` run's) are sampled in float32: a grid in
    bfloat16 would misplace pixels by its rounding, half a pixel at 256 wide."""
    work = torch.promote_types(images.dtype, theta.dtype)
    grid = F.affine_grid(theta.to(images.device, work), list(images.shape), align_corners=False)
    return F.grid_sample(images.to(work), grid, align_corners=False, **options).to(images.dtype)


class BatchRandomAffine:
    """Per-sample random rotation (± ``degrees``), translation (up to ``translate`` of the width
    and height) and scale (in ``scale``) about the image centre, as ``v2.RandomAffine`` draws
    them, on float images ``(N, C, H, W)`` on any device; pixels brought in from outside are
    ``fill`` (one value, or one per channel: black after a normalisation, say).
    ``mode``: ``grid_sample``'s interpolation, nearest by default as v2's (no blur that the
    unaugmented test images do not have)."""

    def __init__(
        self,
        degrees: float = 0.0,
        translate: tuple[float, float] = (0.0, 0.0),
        scale: tuple[float, float] = (1.0, 1.0),
        fill: float | Sequence[float] = 0.0,
        mode: str = "nearest",
    ) -> None:
        self.degrees, self.translate, self.scale, self.fill, self.mode = degrees, translate, scale, fill, mode

    def draw(self, count: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``count`` independent draws: ``angle`` (radians), ``shift`` ``(count, 2)`` (fractions
        of the width and height) and ``factor`` (the scale), float64."""

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(count, *shape, generator=generator, dtype=torch.float64)

        shift = uniform(-1, 1, 2) * torch.tensor(self.translate, dtype=torch.float64)
        return {"angle": torch.deg2rad(uniform(-self.degrees, self.degrees)), "shift": shift,
                "factor": uniform(*self.scale)}  # fmt: skip

    @staticmethod
    def matrices(params: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
        """``(N, 2, 3)`` maps for ``affine_grid``: from each output pixel to where it is read in
        the input, in normalised coordinates (``align_corners=False``)."""
        half = torch.tensor([width / 2, height / 2], dtype=torch.float64)
        # inverse of "scale by s, rotate by a, shift by t", in pixels about the centre
        cos, sin = torch.cos(params["angle"]) / params["factor"], torch.sin(params["angle"]) / params["factor"]
        inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (N, 2, 2)
        offset = -(inverse @ (params["shift"] * 2 * half)[..., None])[..., 0]
        # pixels (centred) → normalised: x_n = x / (W / 2), y_n = y / (H / 2)
        linear = inverse * half[None, None, :] / half[None, :, None]
        return torch.cat([linear, (offset / half)[..., None]], dim=-1).float()

    def warp(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``images`` moved by ``params`` (from :meth:`draw`), one map per image."""
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"expected float images (N, C, H, W), got {tuple(images.shape)} {images.dtype}")
        fill = torch.as_tensor(self.fill, dtype=images.dtype).to(images.device).reshape(-1, 1, 1)
        theta = self.matrices(params, *images.shape[-2:])
        return resample(images - fill, theta, mode=self.mode, padding_mode="zeros") + fill

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.warp(images, self.draw(len(images), generator))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
            f"fill={self.fill}, mode={self.mode!r})"
        )


class BatchRandomResizedCrop:
    """Per-sample random crops of ``scale`` of the frame's area and ``ratio`` width/height,
    resized back to the full frame (and with ``hflip`` mirrored left-right with probability
    ½), drawn as ``v2.RandomResizedCrop`` draws them: up to ten tries for a crop that fits,
    else the frame's centre, cut to the nearest allowed ratio. On images or clips ``(N, *, H, W)``:
    one crop per sample, shared by all its channels and frames (a clip's frames move
    together), applied by one ``affine_grid`` + ``grid_sample`` for the batch. Crops are
    continuous rather than whole pixels, read bilinearly: inside a crop as ``interpolate``
    resizes it, and on its edge from the frame's pixels just beyond it (the frame's own edge
    held)."""

    tries = 10

    def __init__(self, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: bool = False) -> None:  # fmt: skip
        self.scale, self.ratio, self.hflip = scale, ratio, hflip

    def draw(self, count: int, height: int, width: int, generator: torch.Generator | None = None) -> dict:
        """``count`` crops of a ``height`` x ``width`` frame: ``box`` ``(count, 4)`` float64
        ``left, top, width, height`` as fractions of the frame's, and ``flip`` ``(count,)`` bool."""

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

        area = uniform(*self.scale, count, self.tries)
        aspect = torch.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), count, self.tries))
        # in fractions of the frame's width and height: (area x H x W x aspect) ** 0.5 / W, ...
        w, h = (area * aspect * height / width).sqrt(), (area * width / (aspect * height)).sqrt()
        fits = (w <= 1) & (h <= 1)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits
        w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(1)
        frame_ratio = width / height  # no try fits: the centre of the frame, at the nearest ratio
        low, high = min(self.ratio), max(self.ratio)
        whole_w = high / frame_ratio if frame_ratio > high else 1.0
        whole_h = frame_ratio / low if frame_ratio < low else 1.0
        w, h = torch.where(found, w, whole_w), torch.where(found, h, whole_h)
        position = torch.where(found[:, None], uniform(0, 1, count, 2), 0.5)
        left, top = (1 - w) * position[:, 0], (1 - h) * position[:, 1]
        flip = uniform(0, 1, count) < 0.5 if self.hflip else torch.zeros(count, dtype=torch.bool)
        return {"box": torch.stack([left, top, w, h], 1), "flip": flip}

    @staticmethod
    def matrices(params: dict) -> torch.Tensor:
        """``(N, 2, 3)`` maps for ``affine_grid``: each output pixel to where it is read in its
        crop (normalised coordinates, ``align_corners=False``)."""
        left, top, w, h = params["box"].unbind(1)
        sx = torch.where(params["flip"], -w, w)
        zero = torch.zeros_like(w)
        rows = [torch.stack([sx, zero, 2 * left + w - 1], 1), torch.stack([zero, h, 2 * top + h - 1], 1)]
        return torch.stack(rows, 1).float()

    def warp(self, images: torch.Tensor, params: dict) -> torch.Tensor:
        """``images`` ``(N, *, H, W)`` float, each cut and resized by its own crop of ``params``."""
        if images.dim() < 3 or not images.is_floating_point():
            raise ValueError(f"expected float images or clips (N, *, H, W), got {tuple(images.shape)} {images.dtype}")
        count, (height, width) = len(images), images.shape[-2:]
        flat = images.reshape(count, -1, height, width)
        return resample(flat, self.matrices(params), mode="bilinear", padding_mode="border").view(images.shape)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The random draws come from ``generator`` (torch's global one by default), on the CPU."""
        return self.warp(images, self.draw(len(images), *images.shape[-2:], generator))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, ratio={self.ratio}, hflip={self.hflip})"


#: how many times a random move is drawn before a sample it keeps pushing its box out of the
#: image is left unmoved
AUGMENT_TRIES = 10


class BatchBoxAffine:
    """Random shifts and zooms (and with ``hflip`` left-right flips) of a whole batch, one draw
    per sample, boxes moved with their image (:class:`BatchRandomAffine` for the pixels). A draw
    that leaves less than ``min_visible`` of a box inside the image is drawn again, up to
    :data:`AUGMENT_TRIES` times, and then that sample is left unmoved: a box is never dropped nor
    left pointing at nothing. ``fill``: what comes in from outside the image (see
    :class:`BatchRandomAffine`)."""

    def __init__(
        self,
        translate: float,
        scale: tuple[float, float],
        hflip: bool,
        min_visible: float = 0.6,
        fill: float | Sequence[float] = 0.0,
    ) -> None:
        self.affine = BatchRandomAffine(translate=(translate, translate), scale=scale, fill=fill)
        self.hflip, self.min_visible = hflip, min_visible

    def __call__(
        self, images: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` float ``(N, C, H, W)``, ``boxes`` ``(N, 4)`` ``x1, y1, x2, y2`` in pixels,
        both on one device; the boxes' few numbers are worked out on the CPU (float64, which
        not every accelerator has) and come back to that device. The random draws come from
        ``generator`` (torch's global one by default)."""
        count, (height, width), device = len(images), images.shape[-2:], images.device
        size = torch.tensor([width, height, width, height], dtype=torch.float64)
        boxes = boxes.detach().to("cpu", torch.float64)
        params = self.affine.draw(count, generator)
        moved = self.move(boxes, params, size)
        kept = self.visible(moved, size)
        for _ in range(AUGMENT_TRIES - 1):
            if kept.all():
                break
            again = self.affine.draw(count, generator)
            for key in params:
                params[key] = torch.where(_rows(kept, params[key]), params[key], again[key])
            moved = self.move(boxes, params, size)
            kept = self.visible(moved, size)
        params["shift"] = torch.where(kept[:, None], params["shift"], 0.0)
        params["factor"] = torch.where(kept, params["factor"], 1.0)
        moved = torch.where(kept[:, None], moved, boxes)
        images = self.affine.warp(images, params)
        moved = torch.minimum(moved.clamp(min=0), size)
        if self.hflip:
            flip = torch.rand(count, generator=generator) < 0.5
            images = torch.where(flip.to(device)[:, None, None, None], images.flip(-1), images)
            mirrored = torch.stack([width - moved[:, 2], moved[:, 1], width - moved[:, 0], moved[:, 3]], 1)
            moved = torch.where(flip[:, None], mirrored, moved)
        return images, moved.float().to(device)

    @staticmethod
    def move(boxes: torch.Tensor, params: dict[str, torch.Tensor], size: torch.Tensor) -> torch.Tensor:
        """Where the zoom about the centre and the shift take each box (unclamped)."""
        centre, shift = size / 2, params["shift"].repeat(1, 2) * size
        return (boxes - centre) * params["factor"][:, None] + centre + shift

    def visible(self, boxes: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """Whether at least ``min_visible`` of each box's area lies inside the image."""
        inside = torch.minimum(boxes.clamp(min=0), size)
        return _box_area(inside) >= self.min_visible * _box_area(boxes).clamp(min=1e-12)


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


class BatchFlipsAndTurns:
    """Random flips and quarter turns (and an intensity shift) of a whole batch
    ``(N, C, *spatial)``, one draw per sample, as MONAI's ``RandFlip`` (along each spatial axis
    with probability ``prob``), ``RandRotate90`` (in each of ``planes`` with probability ``prob``,
    1 to 3 quarter turns) and ``RandShiftIntensity`` (with probability ``prob``, an offset
    uniform in ± ``shift``) draw them for one sample — but as a few operations on the batch
    where it is (the accelerator, when there is one), not a chain of transforms per sample in
    the loader, which cost a 3D classifier's loader about as much as its training step.
    ``planes``: pairs of spatial axes (0-based) to turn in; a plane of two different sizes
    in the batch given is not turned (a quarter turn of a 96×64 plane would not stack), and
    nothing is drawn for it."""

    def __init__(self, spatial_dims: int, planes: Sequence[tuple[int, int]] = (), prob: float = 0.5,
                 shift: float = 0.0) -> None:  # fmt: skip
        self.spatial_dims, self.planes, self.prob, self.shift = spatial_dims, tuple(planes), prob, shift

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The random draws come from ``generator`` (torch's global one by default), on the CPU."""
        count, first = len(x), x.dim() - self.spatial_dims

        def chosen() -> torch.Tensor:
            return torch.rand(count, generator=generator) < self.prob

        x = x.clone()

        def move(mask: torch.Tensor, how) -> None:
            """Only the chosen samples are moved (in the copy): a move of the whole batch kept
            where chosen would cost a pass over every sample for each kind of move."""
            rows = mask.nonzero().flatten().to(x.device)
            if len(rows):
                x[rows] = how(x[rows])

        for axis in range(self.spatial_dims):
            move(chosen(), lambda part, d=first + axis: part.flip(d))
        for a, b in self.planes:
            if x.shape[first + a] != x.shape[first + b]:
                continue
            turn, quarters = chosen(), torch.randint(1, 4, (count,), generator=generator)
            for k in (1, 2, 3):
                move(turn & (quarters == k), lambda part, k=k, d=(first + a, first + b): torch.rot90(part, k, d))
        if self.shift:
            offset = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * self.shift
            offset = torch.where(chosen(), offset, 0.0)
            x = x + _rows(offset, x).to(x.device, x.dtype)
        return x

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(spatial_dims={self.spatial_dims}, planes={self.planes}, prob={self.prob}, "
            f"shift={self.shift})"
        )
