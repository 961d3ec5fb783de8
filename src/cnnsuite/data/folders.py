"""The class-folder layout (``root/<class>/<file>``) shared by images, videos and GeoTIFFs.

A class folder is read the way torchvision's ``ImageFolder`` reads it: every file under it,
in its sub-folders too (``one/more_scans/x.png`` is a sample of class ``one``); hidden files
and folders (``.DS_Store``, ``.ipynb_checkpoints/``) are not. :func:`list_files` is that one
listing, for training, evaluation and ``cnnsuite predict`` alike. Where the classes sit under
split folders (``train/<class>/...``, see :mod:`cnnsuite.data.splitfolders`), ``splits``
names those folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import BadFileError, ConfigError, MissingFileError


def expand_home(path: str | Path, option: str) -> Path:
    """``path`` as the user gave it to ``option``, its leading ``~`` or ``~user`` expanded as a
    shell expands it. A ``~user`` with no home on this machine is the user's mistake, named with
    its option; pathlib says only "Could not determine home directory", from deep inside."""
    head = Path(path).parts[:1]
    if head and head[0].startswith("~") and os.path.expanduser(head[0]) == head[0]:
        whose = f"no user {head[0][1:]} on this machine" if len(head[0]) > 1 else "no home folder on this machine"
        raise ConfigError(f"{option} {path}: {whose} to expand {head[0]}; expected a path with a known home or none")
    return Path(path).expanduser()


def check_folder(root: str | Path, key: str = "data.data_dir") -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise MissingFileError(f"{key}={root}: no such folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{key}={root}: expected a folder, found a file")
    return root


def leaves_folder(name: str) -> bool:
    """Whether the relative path ``name`` (a sample id, a shard's name: written on any system,
    ``\\`` or ``/``) leads out of the folder it is relative to: absolute, with a drive, or
    through ``..``. A file a dataset or a prepared folder names that way is another's."""
    parts = PurePosixPath(name.replace("\\", "/"))
    return parts.is_absolute() or ".." in parts.parts or bool(PureWindowsPath(name).drive)


def lies_within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or under it, after ``~`` and links are resolved (``~`` as
    Lightning expands its folders: a ``~user`` unknown here is a relative folder's name): a folder
    the suite writes (run files, caches, shards, pictures) must not lie in one it only reads,
    whose next listing would take what was written as samples."""
    path, folder = (Path(os.path.expanduser(p)).resolve() for p in (path, folder))
    return path == folder or folder in path.parents


#: how many files, spread over a data folder, are read to decide what its files share (their
#: channels, a patch's size): the first file alone decided, and one odd file sorting first
#: had every other named bad, or a colour dataset trained on one channel
PROBES = 64


def spread(items: Sequence, count: int = PROBES) -> list:
    """Up to ``count`` of ``items``, evenly spaced over them from the first to the last (all of
    them where there are no more): a folder's files come sorted by class, and the first
    ``count`` would be of the first classes."""
    if len(items) <= max(count, 0):
        return list(items)
    if count <= 1:
        return list(items[:count])
    last = len(items) - 1
    return [items[round(j * last / (count - 1))] for j in range(count)]


def is_listed(path: Path, extensions: Iterable[str], under: Path | None = None) -> bool:
    """Whether ``path`` is a file that a listing takes: one of ``extensions``, and neither it
    nor a folder between ``under`` and it hidden."""
    hidden = any(part.startswith(".") for part in (path.relative_to(under) if under else Path(path.name)).parts)
    return not hidden and path.name.lower().endswith(tuple(e.lower() for e in extensions)) and path.is_file()


def walk(root: Path) -> list[Path]:
    """Every file and folder under ``root``, sorted, as ``sorted(root.rglob("*"))`` lists them
    (a linked folder listed, not entered; one that cannot be listed skipped), without
    recursion: Python's rglob recurses once per level, and a folder nested a thousand deep (an
    archive made so) ended it in a RecursionError."""
    found, folders = [], [root]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:
            continue
        for entry in entries:
            found.append(Path(entry.path))
            if entry.is_dir(follow_symlinks=False):
                folders.append(found[-1])
    return sorted(found)


def list_files(folder: Path, extensions: Iterable[str]) -> list[Path]:
    """Every file under ``folder``, sub-folders included, that :func:`is_listed`, sorted."""
    extensions = tuple(extensions)
    return [p for p in walk(folder) if is_listed(p, extensions, under=folder)]


def list_classes(
    root: Path,
    extensions: Iterable[str],
    find_bad: Callable[[list[str]], dict[str, BadFileError]] | None = None,
    splits: Sequence[str] = (),
) -> list[str]:
    """Sorted names of the class folders of ``root`` (with ``splits``, the training folder
    first, of each of those folders under it: the training folder's, which every other split
    folder's class must be one of); each must hold at least one file with one of
    ``extensions``. Where one holds none, the error lists every such folder and, given
    ``find_bad`` (sample ids → their errors), every bad file of the others too: one error
    names everything to fix."""
    extensions = tuple(e.lower() for e in extensions)
    parents = [root / s for s in splits] or [root]
    folders = [d for parent in parents for d in sorted(parent.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not folders:
        raise ConfigError(
            f"{root}: no class folders; expected <class>/<file> with files ending in {', '.join(extensions)}"
        )
    classes = sorted({d.name for d in folders if d.parent == parents[0]})
    for folder in folders:
        if folder.name not in classes:  # a class the network would never be trained on
            raise ConfigError(f"{folder}: class {folder.name!r} has no folder in {parents[0]}")
    empty = [d for d in folders if not list_files(d, extensions)]
    if empty:
        problems = [f"{d}: class folder holds no file ending in {', '.join(extensions)}" for d in empty]
        if find_bad is not None:
            ids = [i for i, _ in list_samples(root, classes, extensions, splits)]
            problems += [str(err) for err in find_bad(ids).values()]
        if len(problems) == 1:
            raise BadFileError(problems[0])
        raise BadFileError(f"{root}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems))
    return classes


def list_samples(
    root: Path, classes: list[str], extensions: Iterable[str], splits: Sequence[str] = ()
) -> list[tuple[str, int]]:
    """``(path relative to root, class index)`` of every matching file (:func:`list_files`)
    of each class folder, in a stable order; with ``splits``, of each split folder's."""
    extensions = tuple(extensions)
    return [
        (path.relative_to(root).as_posix(), index)
        for parent in ([root / s for s in splits] or [root])
        for index, name in enumerate(classes)
        if (parent / name).is_dir()
        for path in list_files(parent / name, extensions)
    ]
