"""The class-folder layout (``root/<class>/<file>``) shared by images, videos and GeoTIFFs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError, MissingFileError


def check_folder(root: str | Path, key: str = "data.data_dir") -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise MissingFileError(f"{key}={root}: no such folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{key}={root}: expected a folder, found a file")
    return root


def list_classes(root: Path, extensions: Iterable[str]) -> list[str]:
    """Sorted names of the sub-folders of ``root``; each must hold at least one file
    with one of ``extensions``."""
    extensions = tuple(e.lower() for e in extensions)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(
            f"{root}: no class folders; expected <class>/<file> with files ending in {', '.join(extensions)}"
        )
    for name in classes:
        if not any(_matches(f, extensions) for f in (root / name).iterdir()):
            raise ConfigError(f"{root / name}: class folder holds no file ending in {', '.join(extensions)}")
    return classes


def list_samples(root: Path, classes: list[str], extensions: Iterable[str]) -> list[tuple[str, int]]:
    """``(relative path, class index)`` of every matching file, in a stable order."""
    extensions = tuple(e.lower() for e in extensions)
    return [
        (f"{name}/{f.name}", index)
        for index, name in enumerate(classes)
        for f in sorted((root / name).iterdir())
        if _matches(f, extensions)
    ]


def _matches(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(extensions)
