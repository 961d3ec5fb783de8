"""Loading a file nobody vouches for (a checkpoint, a state dict): tensors only, one-line errors."""

from __future__ import annotations

import io
import pickletools
import re
from pathlib import Path

import torch

from ..errors import BadFileError


def load_weights_only(path: Path, failure: str, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU: a file that would run pickled code, or
    is damaged or foreign, is a one-line ``ValueError``, ``failure`` followed by what torch met
    (``Unsupported global: GLOBAL print``), without its many-line advice to load it unsafely."""
    check_tuples(path, failure)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for a damaged, foreign or code-carrying file
        raise BadFileError(f"{failure} ({type(err).__name__}: {_load_error_detail(err)})") from None


#: the values of tuples a weight file may hand its unpickler, all references counted, as a
#: multiple of its pickled bytes, past a floor no real file comes near
MAX_TUPLE_EXPANSION, TUPLE_FLOOR = 16, 1 << 20
#: the pickles a file in torch's legacy format holds before its raw storage bytes
LEGACY_PICKLES = 5


def check_tuples(path: Path, failure: str) -> None:
    """Refuse, before it is unpickled, a file whose tuples come to far more values than it
    holds. A pickle stores a tuple once however often it is referenced, and ``weights_only``
    allows a mapping keyed by a tuple, which the unpickler hashes, all of it, at every use:
    thirty tuples each holding the next twice are a few hundred bytes that ``torch.load`` would
    hash for hours, and a tuple of a million values used as a key a thousand times costs as
    much. The pickles are read as opcodes (:mod:`pickletools`, nothing built) from the bytes
    ``torch.load`` reads (torch's own zip reader; a legacy file's leading pickles), each tuple's
    size counted from what it holds, and every tuple handed on (made, or referenced again,
    itself or in a list, mapping or object that holds it: ``set(L)`` hashes ``L``'s tuples)
    adds its size; past :data:`MAX_TUPLE_EXPANSION` times the pickled bytes (and
    :data:`TUPLE_FLOOR`) the file is refused. What does not read so is left to ``torch.load``."""
    try:
        with open(path, "rb") as file:
            if torch.serialization._is_zipfile(file):
                with torch.serialization._open_zipfile_reader(str(path)) as archive:
                    data = archive.get_record("data.pkl")
                handed, held = _tuple_values(io.BytesIO(data), 1), len(data)
            else:  # the legacy format: pickles one after another, then the storages' raw bytes
                handed, held = _tuple_values(file, LEGACY_PICKLES), path.stat().st_size
    except Exception:  # not a file torch reads (torch's reader raises RuntimeError): torch.load names it
        return
    if handed > max(TUPLE_FLOOR, MAX_TUPLE_EXPANSION * held):
        raise BadFileError(
            f"{failure} (its tuples come to {handed:,} values when read in full, from {held:,} bytes: tuples "
            "referenced over and over; expected a file torch.save wrote)"
        )


#: the opcodes that put what they pop into the object below it, which stays on the stack
_FILLS = ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "BUILD")
_TUPLES = ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE")


def _tuple_values(stream, count: int) -> int:
    """The values the tuples of the first ``count`` pickles of the binary ``stream`` hand on
    (see :func:`check_tuples`); as far as they read as opcodes. Each object on the stack is a
    cell of the tuple values it holds, shared with the memo: a list or a mapping filled with
    tuples (or an object built from them) handed on again, to ``set()`` say, which hashes them
    all, counts them again as a tuple does."""
    handed = 0
    for _ in range(count):
        stack: list[list[int] | None] = []  # the tuple values an object holds, in a cell; None for a mark
        memo: dict[int, list[int] | None] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = stack[-1]
                elif name == "MEMOIZE":
                    memo[len(memo)] = stack[-1]
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo[arg])
                    handed += (memo[arg] or [0])[0]
                elif name in ("MARK", "DUP"):
                    stack.append(None if name == "MARK" else stack[-1])
                else:
                    popped, fixed = [], len(opcode.stack_before)
                    if pickletools.stackslice in opcode.stack_before:  # the items down to the mark, and the mark
                        while stack[-1] is not None:
                            popped.append(stack.pop())
                        stack.pop()
                        fixed -= 2
                    popped += [stack.pop() for _ in range(fixed)]
                    if name in _TUPLES:
                        cell = [1 + sum(max(c[0], 1) for c in popped)]
                        handed += cell[0]
                    elif name in _FILLS:  # the deepest popped is the object filled
                        cell = popped.pop()
                        cell[0] += sum(c[0] for c in popped)
                    else:  # what a call (REDUCE, NEWOBJ) makes holds what it was given
                        cell = [sum(c[0] for c in popped)]
                    stack += [cell] * len(opcode.stack_after)
        except (ValueError, IndexError, KeyError, TypeError):  # not opcodes this reads: torch.load says what it is
            return handed
    return handed


def check_finite_tensors(tensors: dict[str, torch.Tensor], source: object) -> None:
    """Weights with NaN or infinity give NaN outputs without a word: a one-line ``ValueError``
    naming ``source`` and the first such tensor."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise BadFileError(f"{source}: non-finite weights (NaN or infinity) in {bad[0]}{more}")


def _load_error_detail(err: Exception) -> str:
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.|\n\n|$)", text, re.S)
    return " ".join((found.group(1) if found else text).split()) or "no message"
