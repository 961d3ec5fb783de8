"""Where recognition2d's samples come from: an image folder, ``<class>/<file>`` (files in a
class folder's sub-folders too), or one split into ``train/<class>/...``, ``val/<class>/...``
(and ``test/<class>/...``) folders as torchvision's ``ImageFolder`` datasets are shipped, or
a folder of images with a ``labels.csv`` (columns ``image,label``, or ``image`` and one 0/1
column per class): the one layout where an image may carry several labels (``a;b``), since a
file sits in one class folder only.

The embedded default is scikit-learn's 1,797 real handwritten digit scans (8×8, 16 grey
levels), written once as PNGs under ``data/recognition2d/`` with the digit tasks' shared
split as ``train.txt``/``val.txt``/``test.txt``, and read back by the same reader as a
user's folder. Images of any size, mode and bit depth are decoded by torchvision, brought to
``channels`` (gray or RGB), resized to ``image_size`` — LeNet-5 wants 32×32 — and scaled to
[0, 1] (:func:`~cnnsuite.data.read_image`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from cnnsuite.data import (
    IMAGE_EXTENSIONS,
    ImageDataModule,
    Input,
    check_folder,
    describe_image_preprocessing,
    image_channels,
    read_image,
)
from cnnsuite.data.augment import BatchRandomAffine
from cnnsuite.data.digits import digit_scans, digit_split
from cnnsuite.data.images import read_image_with_picture
from cnnsuite.errors import ConfigError


class ImageFolderDataset(Dataset):
    """``(image float tensor (C, H, W), target)`` for each relative path in ``ids``: a class
    index, or a multi-hot vector for a multi-label run.

    Files are decoded, resized to ``size`` and scaled to [0, 1] in ``cache`` (the datamodule's
    :meth:`~cnnsuite.data.TaskDataModule.decoded_cache`): once, into float images kept in memory,
    when the split fits in ``cache_limit_mb`` (see :mod:`cnnsuite.data.cache`), or read from the
    shards of a prepared folder. ``transform`` (normalisation) runs on a whole batch
    ``(N, C, H, W)`` of them (``__getitems__``, PyTorch's batched fetch); training's random moves
    come after the batch reached the model's device (:meth:`RecognitionDataModule.augment_batch`).
    """

    def __init__(
        self, root: Path, ids: list[str], labels: list, channels: int, size: tuple[int, int], transform, cache,
    ) -> None:  # fmt: skip
        self.root, self.ids, self.labels = root, ids, labels
        self.channels, self.size, self.transform = channels, size, transform
        nbytes = len(ids) * channels * size[0] * size[1] * 4  # float32
        self.images = cache(self.decode, ids, nbytes, what=f"{root}: {len(ids)} images")

    def decode(self, index: int) -> torch.Tensor:
        return read_image(self.root / self.ids[index], self.channels, self.size)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        images = self.transform(torch.stack([self.images[i] for i in indices]))
        return list(zip(images, (self.labels[i] for i in indices), strict=True))


class RecognitionDataModule(ImageDataModule):
    """Image folder → train/val/test loaders of ``(image, label)``.

    ``cache_limit_mb``: a split whose resized images fit is decoded once and kept in memory
    (:mod:`cnnsuite.data.cache`); training's random affine moves run on whole batches, on the
    model's device (:meth:`augment_batch`).
    ``on_bad_file``: ``error`` (default) reads every file's header before training (and each
    split's when it is read) and stops naming all that fail (a file damaged past its header
    is named when decoded); ``skip``
    decodes every file once and leaves out the bad ones with one warning naming each.
    ``multilabel``: ``auto`` trains multi-label when some row of ``data_dir/labels.csv`` holds
    several labels, ``true`` always (targets become multi-hot vectors), ``false`` never.
    """

    default_name = "recognition2d"
    streams_prepared = True
    after_decoding_hparams = ("batch_size", "augment")

    def __init__(self, multilabel: Literal["auto"] | bool = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        data_dir, channels = self.raw_data_dir, self.hparams.channels
        if data_dir is None:
            self.class_names = [str(d) for d in range(10)]
            self.in_channels = channels or 1
            self.decide_multilabel(multilabel is True)
        else:
            root = check_folder(data_dir)
            self.read_labelled_folder(root, IMAGE_EXTENSIONS, "image", multilabel, "images")
            self.in_channels = channels or image_channels(root / i for i, _ in self.samples())
        self.use_prepared()

    @property
    def input_shape(self) -> tuple[int, ...]:
        size = self.hparams.image_size
        return (self.in_channels, size, size)

    def write_default(self, folder: Path) -> None:
        images, labels = digit_scans()
        for digit in range(10):
            (folder / str(digit)).mkdir()
        ids = [f"{label}/{index:04d}.png" for index, label in enumerate(labels)]
        for sample_id, image in zip(ids, images, strict=True):
            Image.fromarray(image, mode="L").save(folder / sample_id)
        for stage, indices in digit_split().items():
            (folder / f"{stage}.txt").write_text("".join(f"{ids[i]}\n" for i in indices))

    def list_samples(self) -> list[tuple[str, object]]:
        return self.folder_samples(IMAGE_EXTENSIONS)

    @property
    def size(self) -> tuple[int, int]:
        """What every split resizes a decoded image to (the cache keeps it at this size)."""
        return (self.hparams.image_size, self.hparams.image_size)

    def transform(self) -> v2.Normalize:
        """What follows reading (resized, in [0, 1]), on one image or a batch of them, in every
        split: normalisation."""
        return v2.Normalize(**self.input_normalisation)

    def augment_batch(self, batch: list) -> list:
        """Training's random affine maps, one per sample (:class:`BatchRandomAffine`: ±10°, ±10 %
        shifts, 0.9–1.1 zooms), on the normalised images where the batch is: what comes in
        from outside the image is black, as when the [0, 1] pixels were moved."""
        if not self.hparams.augment:
            return batch
        images, targets = batch
        moves = BatchRandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=self.normalised_black)
        return [moves(images, self.augment_generator), targets]

    def describe_preprocessing(self) -> dict:
        return describe_image_preprocessing(self.in_channels, self.hparams.image_size, **self.input_normalisation)

    def read_input(self, path: Path) -> Input:
        """The image as the test split reads it; ``view``, which its picture is drawn from, a
        copy no larger than a picture (:func:`read_image_with_picture`)."""
        image, picture, (width, height) = read_image_with_picture(path, self.in_channels, self.size)
        return Input(path, self.transform()(image), {"width": width, "height": height}, view=picture)

    def make_dataset(self, ids: list[str], stage: str) -> Dataset:
        ids = self.check_samples(ids, stage)
        label_of = dict(self.samples())
        unknown = [i for i in ids if i not in label_of]
        if unknown:
            raise ConfigError(f"{unknown[0]}: not an image of {self.root} ({self.class_names})")
        return ImageFolderDataset(self.root, ids, [label_of[i] for i in ids], self.in_channels, self.size,
                                  self.transform(), self.decoded_cache(stage))  # fmt: skip
