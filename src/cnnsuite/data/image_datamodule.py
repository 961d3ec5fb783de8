"""What the datamodules of image tasks share: their image settings, declared and checked once."""

from __future__ import annotations

from ..errors import BadFileError, ConfigError
from .datamodule import TaskDataModule
from .images import IMAGE_EXTENSIONS, find_bad_images, image_channel_names, symmetric_normalisation


class ImageDataModule(TaskDataModule):
    """A :class:`TaskDataModule` whose samples are image files.

    ``image_size``: the side of the square each image is resized to; ``channels``: 1 (gray), 3
    (RGB) or null (from the first file); ``augment``: random affine maps on training batches;
    ``cache_limit_mb``: a split whose resized images fit is decoded once and kept in memory
    (:mod:`cnnsuite.data.cache`); ``on_bad_file``: ``error`` stops naming every file that does
    not read, ``skip`` leaves them out with one warning. The rest (where the data is, batch,
    workers, split) are :class:`TaskDataModule`'s.
    """

    input_extensions = IMAGE_EXTENSIONS
    sample_noun = "images"

    @property
    def input_normalisation(self) -> dict:
        """[0, 1] pixels to [-1, 1], every channel (:func:`symmetric_normalisation`)."""
        mean, std = symmetric_normalisation(self.in_channels)
        return {"mean": mean, "std": std}

    @property
    def normalised_black(self) -> list[float]:
        """A black pixel after :attr:`input_normalisation`, per channel: what a random move of
        normalised images (a task's ``augment_batch``) brings in from outside them, as moving
        the [0, 1] pixels would."""
        norm = self.input_normalisation
        return [-mean / std for mean, std in zip(norm["mean"], norm["std"], strict=True)]

    def __init__(
        self,
        image_size: int = 32,
        channels: int | None = None,
        augment: bool = True,
        cache_limit_mb: float = 1024,
        on_bad_file: str = "error",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if image_size < 8:
            raise ConfigError(f"data.image_size={image_size}: expected at least 8 pixels")

    def find_bad(self, ids: list[str], decode: bool) -> dict[str, BadFileError]:
        """The images of ``ids`` that do not read: headers only, or decoded in full."""
        return find_bad_images(self.root, ids, decode_channels=self.in_channels if decode else None)

    @property
    def channel_names(self) -> list[str] | None:
        """``L`` for grey images, ``R``, ``G``, ``B`` for colour ones (:data:`~cnnsuite.data.images.IMAGE_CHANNELS`)."""
        return image_channel_names(self.in_channels)
