"""Shared data plumbing: prepare-once, splits, class folders, readers that name bad files."""

from .datamodule import TaskDataModule
from .errors import BadFileError, check_finite, check_on_bad_file, collect_bad, report_bad_files
from .folders import check_folder, list_classes, list_samples
from .image_datamodule import ImageDataModule
from .images import (
    IMAGE_EXTENSIONS,
    describe_image_preprocessing,
    find_bad_images,
    image_channel_names,
    image_channels,
    image_size,
    read_image,
    symmetric_normalisation,
)
from .inputs import Input
from .prepare import prepare_once
from .splits import load_splits, read_split_lists, save_splits, stratified_split

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataModule",
    "Input",
    "BadFileError",
    "TaskDataModule",
    "check_finite",
    "check_folder",
    "check_on_bad_file",
    "describe_image_preprocessing",
    "find_bad_images",
    "image_channel_names",
    "image_channels",
    "image_size",
    "list_classes",
    "list_samples",
    "load_splits",
    "prepare_once",
    "read_image",
    "read_split_lists",
    "collect_bad",
    "report_bad_files",
    "save_splits",
    "stratified_split",
    "symmetric_normalisation",
]
