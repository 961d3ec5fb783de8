"""Loading a file nobody vouches for (a checkpoint, a state dict): tensors only, one-line errors."""

from __future__ import annotations

import pickletools
import re
import zipfile
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


#: the most values a tuple of a weight file may come to when read in full
MAX_TUPLE_VALUES = 1 << 20


def check_tuples(path: Path, failure: str) -> None:
    """Refuse, before it is unpickled, a file holding a tuple that comes to more than
    :data:`MAX_TUPLE_VALUES` values read in full. A pickle stores a tuple once however often it
    is referenced, so thirty tuples each holding the next twice are a few hundred bytes; made
    a mapping's key (which ``weights_only`` allows), the unpickler hashes it, and Python hashes
    a tuple afresh, all 2^30 of its values: ``torch.load`` itself would take hours. The file's
    pickle is read as opcodes (:mod:`pickletools`, nothing built), each tuple's size counted
    from what it holds, a reference to one taking its size. A file that is not torch's zip
    format, or does not read as opcodes, is left to ``torch.load`` to refuse or read."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            data = archive.read(member) if member is not None else b""
    except (OSError, zipfile.BadZipFile, ValueError):
        return
    stack: list[int | None] = []  # each object's size, None for a mark
    memo: dict[int, int | None] = {}
    size = 0
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "MARK":
                stack.append(None)
            elif name == "DUP":
                stack.append(stack[-1])
            else:
                popped = []
                if pickletools.stackslice in opcode.stack_before:  # the items down to the mark, and the mark
                    while stack[-1] is not None:
                        popped.append(stack.pop())
                    stack.pop()
                    fixed = len(opcode.stack_before) - 2
                else:
                    fixed = len(opcode.stack_before)
                popped += [stack.pop() for _ in range(fixed)]
                size = 1 + sum(v or 0 for v in popped) if name.startswith("TUPLE") else 1
                if size > MAX_TUPLE_VALUES:
                    break
                stack += [size] * len(opcode.stack_after)
    except (ValueError, IndexError, KeyError):  # not opcodes this reads: torch.load says what it is
        return
    if size > MAX_TUPLE_VALUES:
        raise BadFileError(
            f"{failure} (a tuple of it comes to {size:,} values when read in full: tuples referenced over and "
            "over; expected a file torch.save wrote)"
        )


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
