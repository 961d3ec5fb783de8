"""Loading a file nobody vouches for (a checkpoint, a state dict): tensors only, one-line errors."""

from __future__ import annotations

import io
import re
import zipfile
from itertools import pairwise
from pathlib import Path

import torch

from ..errors import BadFileError, CheckpointError
from .picklescan import MAX_COLLIDING, CalledTooMuch, Colliding, Unread, scan


def load_weights_only(path: Path, failure: str, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU: a file that would run pickled code, or
    is damaged or foreign, is a one-line ``ValueError``, ``failure`` followed by what torch met
    (``Unsupported global: GLOBAL print``), without its many-line advice to load it unsafely.
    With ``mmap`` (a checkpoint's tensors mapped, not read) the file must be a zip archive."""
    zipped = check_pickle(path, failure)
    # torch maps its zip format alone; its error for another file advises an option of torch.save
    if mmap and zipped is False:
        raise BadFileError(f"{failure} (not a zip archive as torch.save writes it)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for a damaged, foreign or code-carrying file
        raise BadFileError(f"{failure} ({type(err).__name__}: {_load_error_detail(err)})") from None


#: the values of tuples a weight file may hand its unpickler, all references counted, as a
#: multiple of its pickled bytes, past a floor no real file comes near
MAX_TUPLE_EXPANSION, TUPLE_FLOOR = 16, 1 << 20
#: the pickles a file in torch's legacy format holds before its raw storage bytes
LEGACY_PICKLES = 5


def check_pickle(path: Path, failure: str) -> bool | None:
    """Refuse, before it is unpickled, a file that names or calls what torch.save never writes for a
    network's weights (:mod:`~.picklescan`'s allow-list), whose tuples come to far more values than
    it holds, or whose keys are built to share one hash. A pickle stores a tuple once however
    often it is referenced, and ``weights_only`` allows a mapping keyed by a tuple, which the
    unpickler hashes, all of it, at every use: thirty tuples each holding the next twice are a
    few hundred bytes that ``torch.load`` would hash for hours, and a tuple of a million values
    used as a key a thousand times costs as much. The pickles are read as opcodes
    (:mod:`pickletools`, nothing built) from the bytes ``torch.load`` reads (torch's own zip
    reader; a legacy file's leading pickles), each tuple's size counted from what it holds, and
    every tuple handed on (made, or referenced again, itself or in a list, mapping or object
    that holds it: ``set(L)`` hashes ``L``'s tuples) adds its size; past
    :data:`MAX_TUPLE_EXPANSION` times the pickled bytes (and :data:`TUPLE_FLOOR`) the file is
    refused. So is a file whose calls (``REDUCE``, ``BUILD``) are handed lists, mappings and
    strings of as many items in all, which each call reads in full: ``set(L)`` a thousand times
    over a list of a thousand ints is 6 KB more, and takes a million steps and a thousand sets of
    memory; ``_codecs.encode(S, "latin1")`` a thousand times over one long string copies it each time.
    The same pass refuses a list, mapping or tuple holding more than
    :data:`~.picklescan.MAX_COLLIDING` different values of one hash (see :func:`~.picklescan.scan`): building a
    mapping or set of such keys takes time quadratic in their number, and ints ``k * (2**61 - 1)``
    all hash to 0: a file of a few megabytes of them would hold ``torch.load`` for hours. What does
    not read so is left to ``torch.load``. Returns whether the file is a zip archive (None when it
    does not open)."""
    storages: dict[str, tuple[str, int]] = {}
    zipped = None
    try:
        with open(path, "rb") as file:
            zipped = torch.serialization._is_zipfile(file)
            if zipped:
                records = check_stored(path, failure)
                with torch.serialization._open_zipfile_reader(str(path)) as archive:
                    data = archive.get_record("data.pkl")
                    # where torch maps each storage's record from (its local header, which the sizes do not say)
                    starts = {name: archive.get_record_offset(name) for name in records if name.startswith("data/")}
                stream, count, held = io.BytesIO(data), 1, len(data)
            else:  # the legacy format: pickles one after another, then the storages' raw bytes
                stream, count, held, records, starts = file, LEGACY_PICKLES, path.stat().st_size, None, None
            bound = max(TUPLE_FLOOR, MAX_TUPLE_EXPANSION * held)
            handed = scan(stream, count, bound, storages)
    except CalledTooMuch:
        raise BadFileError(
            f"{failure} (its calls are handed lists, mappings and strings of over {bound:,} items in all, from "
            f"{held:,} bytes: one handed to set(), complex() or another call over and over; expected a "
            "file torch.save wrote)"
        ) from None
    except Unread as err:
        raise BadFileError(f"{failure} ({err}; expected a file torch.save wrote)") from None
    except Colliding:
        raise BadFileError(
            f"{failure} (over {MAX_COLLIDING} different keys of one hash in one list, mapping or tuple: keys made "
            "to collide, which take time quadratic in their number to load; expected a file torch.save wrote)"
        ) from None
    except BadFileError:
        raise
    except Exception:  # not a file torch reads (torch's zip reader raises RuntimeError): torch.load names it
        return zipped
    if handed > bound:
        raise BadFileError(
            f"{failure} (its tuples come to {handed:,} values when read in full, from {held:,} bytes: tuples "
            "referenced over and over; expected a file torch.save wrote)"
        )
    check_declared(storages, records, path.stat().st_size, failure, starts)
    return zipped


def check_declared(storages: dict[str, tuple[str, int]], records: dict[str, int] | None, size: int,
                   failure: str, starts: dict[str, int] | None) -> None:  # fmt: skip
    """Each storage a file's persistent ids name (``storages``, key → (type, values)) must be as
    large as the bytes that fill it. A memory-mapped zip record declared larger than it is reads
    on into the records after it, so a thousand one-byte records each declared as the whole file
    pass for a thousand files' values; a storage in torch's legacy format is allocated as declared
    and filled only if the file lists it, so a few hundred bytes passed for gigabytes. ``records``:
    a zip's record sizes by name (each storage's is ``data/KEY``, as torch.save writes it), ``None``
    for the legacy format, whose storages together must fit in its ``size`` bytes. ``starts``: where
    each record's bytes start in a zip, by name: records whose bytes overlap (a record's local header
    placed inside the one before it) pass, each as large as declared, for as many files as there are
    records, so the storages' records must not overlap, as torch.save writes them one after another."""
    declared = {}
    for key, (kind, values) in storages.items():
        try:
            itemsize = 1 if kind == "UntypedStorage" else torch.serialization.StorageType(kind).dtype.itemsize
        except Exception:  # a type torch does not know: torch.load names it
            continue
        declared[key] = values * itemsize
    if records is not None:
        wrong = [(k, n) for k, n in declared.items() if records.get(f"data/{k}", n) != n]
        if wrong:
            key, nbytes = wrong[0]
            raise BadFileError(
                f"{failure} (its storage {key!r} is declared {nbytes:,} bytes where its record holds "
                f"{records[f'data/{key}']:,}; expected a file torch.save wrote)"
            )
        spans = sorted((starts[f"data/{k}"], n, k) for k, n in declared.items() if n and f"data/{k}" in starts)
        overlapping = [(k, after) for (at, n, k), (start, _, after) in pairwise(spans) if at + n > start]
        if overlapping:
            key, after = overlapping[0]
            raise BadFileError(
                f"{failure} (its storages {key!r} and {after!r} overlap in the file; expected a file torch.save "
                "wrote, whose records follow one another)"
            )
    elif sum(declared.values()) > size:
        raise BadFileError(
            f"{failure} (its storages are declared {sum(declared.values()):,} bytes, more than its {size:,} bytes "
            "hold; expected a file torch.save wrote)"
        )


def check_stored(path: Path, failure: str) -> dict[str, int]:
    """Refuse a zip archive whose records are compressed, before any is read: torch's zip reader
    inflates them, and a megabyte of deflated zeros is a gigabyte of pickle to scan and unpickle,
    or of weights to hold. ``torch.save`` stores each record as it is. An archive Python's
    ``zipfile`` does not read (whose records it cannot vouch for) is refused too. Returns the
    records' sizes by name inside the archive's folder (``data/0``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            packed = [info for info in infos if info.compress_type != zipfile.ZIP_STORED]
    except Exception as err:  # BadZipFile, or an error of the central directory's fields
        raise BadFileError(
            f"{failure} (not a zip archive as torch.save writes it: {_load_error_detail(err)})"
        ) from None
    names = [info.filename for info in infos]
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise BadFileError(f"{failure} (its record {twice!r} is there twice; expected a file torch.save wrote)")
    if packed:
        raise BadFileError(
            f"{failure} (its record {packed[0].filename!r} is compressed, {packed[0].compress_size:,} bytes for "
            f"{packed[0].file_size:,}; expected a file torch.save wrote, which stores its records uncompressed)"
        )
    return {info.filename.split("/", 1)[-1]: info.file_size for info in infos}


def check_values_stored(state: dict[str, torch.Tensor], source: object) -> None:
    """Every value of every weight is stored in the file once: a tensor saved as a view that
    repeats one stored value (``torch.zeros(1).expand(4096, 4096, 3, 3)``), or weights that
    overlap in one storage, would let a file of kilobytes pass for networks of gigabytes, which
    are sized against its weights before they are built (:func:`~.checkpoint.build_model`), and a
    backbone's weights file would have every value it passes for checked finite."""
    claimed: dict[int, int] = {}
    stored: dict[int, int] = {}
    for tensor in state.values():
        storage = tensor.untyped_storage()
        key = storage.data_ptr()  # tensors sharing a storage share its bytes
        claimed[key] = claimed.get(key, 0) + tensor.numel() * tensor.element_size()
        stored[key] = storage.nbytes()
    over = [key for key in claimed if claimed[key] > stored[key]]
    if over:
        total, held = sum(claimed.values()), sum(stored.values())
        raise CheckpointError(
            f"{source}: its weights hold {total:,} bytes of values where the file stores {held:,}: "
            "some repeat or overlap others; expected each value stored once, as torch.save writes a state_dict"
        )


def check_finite_tensors(tensors: dict[str, torch.Tensor], source: object) -> None:
    """Weights with NaN or infinity give NaN outputs without a word: a one-line ``ValueError``
    naming ``source`` and the first such tensor. A floating dtype torch has no ``isfinite`` for
    (``float8_e4m3fn``) is checked as ``float32``; one it cannot convert either is refused, named."""

    def finite(key: str, value: torch.Tensor) -> bool:
        try:
            return bool(torch.isfinite(value).all())
        except NotImplementedError:
            pass
        try:
            return bool(torch.isfinite(value.float()).all())
        except NotImplementedError:
            raise BadFileError(f"{source}: {key} holds weights of {value.dtype}, which cannot be read") from None

    bad = [k for k, v in tensors.items() if v.is_floating_point() and not finite(k, v)]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise BadFileError(f"{source}: non-finite weights (NaN or infinity) in {bad[0]}{more}")


def _load_error_detail(err: Exception) -> str:
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.|\n\n|$)", text, re.S)
    return " ".join((found.group(1) if found else text).split()) or "no message"
