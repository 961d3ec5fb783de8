"""A pickle read as opcodes (:mod:`pickletools`, nothing built) for what unpickling it would
cost: the tuple values it hands on, the items its calls read, and the keys of one hash in one
container, as CPython would hash them; and the globals it names, only those torch.save writes for
our files (:data:`_CALLED`, :data:`_NAMED`, :data:`_STORAGES`), and their calls, ``BUILD`` and persistent ids
handed only what torch.save hands them: an allow-list, as each review of what ``weights_only`` allows found one
more that costs what the file does not hold.
:func:`~cnnsuite.trust.untrusted.check_pickle` runs it on a weight file before ``torch.load`` does;
see there why each measure is bounded."""

from __future__ import annotations

import array
import codecs
import pickletools
import re
import struct

import torch
from torch._utils import IMPORT_MAPPING, NAME_MAPPING

#: the different values of one hash a list, mapping or tuple may hold: building a mapping or
#: set of them costs their number squared; real values collide by chance, two or three at most
MAX_COLLIDING = 64
#: the opcodes that put what they pop into the object below it, which stays on the stack
_FILLS = ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "BUILD")
_TUPLES = ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE")
#: the opcodes that push a value given by their argument (``None`` for ``NONE``)
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_SCALARS = (pickletools.pyint, pickletools.pylong, pickletools.pyinteger_or_bool, pickletools.pybool)
_SCALARS += (pickletools.pyfloat, pickletools.pyunicode, pickletools.pystring, pickletools.pybytes)
_SCALARS += (pickletools.pybytes_or_str,)
#: the only globals a pickle may call (``REDUCE``), each one torch.save writes for our files: a tensor, a
#: state dict (``OrderedDict()``, filled after), and plain values a task's arguments may hold (jsonargparse parses
#: sets, complex numbers and bytes, which torch.save writes as ``_codecs.encode(s, "latin1")``); a tensor of the
#: newer dtypes (``_rebuild_tensor_v3``), a format older than 0.4 (``_rebuild_tensor``) and a ``Parameter`` come
#: in published weight files. ``weights_only`` allows many more, and every review found another that costs what
#: the file does not hold (``bytearray(n)``, ``torch.FloatTensor(n)``, sparse, nested or meta tensors, tensors
#: moved from the CPU, ``_rebuild_from_type_v2`` calling any of them): anything else is refused, named
_CALLED = frozenset(("collections OrderedDict", "builtins set", "builtins complex", "_codecs encode",
                     "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_tensor_v3",
                     "torch._utils _rebuild_tensor", "torch._utils _rebuild_parameter"))  # fmt: skip
#: the globals a pickle may name but not call: a dtype handed to ``_rebuild_tensor_v3``, and a storage's type in
#: torch's persistent id (``torch.cuda`` ones in legacy files)
_NAMED = frozenset(f"torch {name}" for name, value in vars(torch).items() if isinstance(value, torch.dtype))
_STORAGES = re.compile(r"torch(\.cuda)? \w+Storage|torch\.storage UntypedStorage")
_ALLOWED = _CALLED | _NAMED
#: the globals allowed above whose calls the scan makes itself: their values hash by content, so keys built
#: from them can be made to collide
_COMPLEX, _ENCODE = ("builtins complex",), ("_codecs encode",)
_LATIN_1 = "latin1"
#: the globals allowed above that make a mapping or set (unhashable, filled later)
_CONTAINERS = ("collections OrderedDict", "builtins set")
#: the globals allowed above that make a tensor
_REBUILDS = ("torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_tensor_v3", "torch._utils _rebuild_tensor",
             "torch._utils _rebuild_parameter")  # fmt: skip
_UNHASHABLE, _UNSET = -1, object()


class CalledTooMuch(Exception):
    """Raised by the scan as soon as calls were handed more items than its bound: it stops there, as
    each ``BUILD`` adds its mapping's keys to the object's, work the bound keeps linear."""


class Unread(Exception):
    """Raised by the scan for a global ``torch.save`` never writes for our files, or a call of one
    that costs what the file does not hold (``_codecs.encode()`` to another codec); its message
    names it."""


class Colliding(Exception):
    """Raised by the scan: over :data:`MAX_COLLIDING` different values of one hash went into one container."""


class _Hashed:
    """Stands for a value by its hash: ``hash(tuple(map(_Hashed, hashes)))`` is the hash of a tuple
    of values with those hashes, computed by CPython itself."""

    __slots__ = ("value",)

    def __init__(self, value: int):
        self.value = value

    def __hash__(self) -> int:
        return self.value


class _Cell:
    """What the scan knows of an object on the unpickler's stack (shared with the memo, as the
    object is): ``size``, the tuple values it holds; ``key``, a number equal for equal values
    (``_UNHASHABLE`` for a list or mapping, ``None`` for a scalar not yet numbered) and ``hash``,
    its value's hash (exact for numbers, strings and tuples of them, whose hashes can be made to
    collide; arbitrary for an object hashed by identity); ``scalar``, a number's or string's value;
    ``items``, a tuple's cells; ``name``, a global's; ``tally``, a container's (items or keys, and
    its items' first items: ``OrderedDict(L)`` hashes those of ``L``'s pairs) hash -> the keys
    seen; ``first``, a list's first item or a mapping's first key (a pair's, for ``OrderedDict()``),
    and until it is given one, ``parents``, the containers it went into; ``source``, what a set
    or ``OrderedDict()`` was made from, whose values it iterates (one of them first);
    ``length``, a list's items, a mapping's keys or a string's characters, what a call given it
    reads (``set(s)``, ``_codecs.encode(s, "latin1")`` read and copy all of ``s``); ``made``, what made
    it: the opcode of a new list, mapping, set or storage (``BINPERSID``), the global of a call's result;
    ``iterable``, a list given a tensor or a storage among its items, which ``OrderedDict(L)`` would iterate
    as a pair."""

    __slots__ = ("size", "key", "hash", "scalar", "items", "name", "tally", "first", "parents", "source", "length",
                 "made", "iterable")  # fmt: skip

    def __init__(self, size: int = 0, key: int | None = _UNHASHABLE, hash_: int = 0):
        self.size, self.key, self.hash, self.length = size, key, hash_, 0
        self.scalar, self.items, self.name, self.tally, self.first, self.parents = _UNSET, None, None, None, None, None
        self.source, self.made, self.iterable = None, None, False


class _Numbering:
    """Numbers values so that equal values (``1``, ``1.0``, ``True``) share a number, keyed by
    bytes, whose hashes Python randomises: a table keyed by the file's own numbers would collide
    as the unpickler's does."""

    def __init__(self):
        self.numbers: dict[bytes, int] = {}

    def number(self, key: bytes | None) -> int:
        """The number of the value ``key`` describes; a new one for ``None`` (a NaN equals nothing)."""
        if key is None:
            key = b"u%d" % len(self.numbers)
        return self.numbers.setdefault(key, len(self.numbers))

    def identify(self, cell: _Cell) -> int:
        """``cell``'s key, numbering a scalar on first use."""
        if cell.key is None:
            cell.key, cell.hash = self.number(_scalar_bytes(cell.scalar)), hash(cell.scalar)
        return cell.key

    def tuple_of(self, cell: _Cell, items: list[_Cell]) -> None:
        """Set tuple ``cell``'s key and hash from its items': linear in their number, as a tuple
        of shared tuples is numbered from its items' numbers, never walked."""
        keys = [self.identify(item) for item in items]
        if _UNHASHABLE in keys:
            return
        cell.key = self.number(b"t" + array.array("q", keys).tobytes())
        cell.hash = hash(tuple(_Hashed(item.hash) for item in items))

    def made(self, cell: _Cell, name: str | None, items: list[_Cell]) -> None:
        """Set ``cell``'s key and hash as the result of calling ``name`` on ``items``: computed for
        ``complex()`` and ``_codecs.encode()`` (to latin-1, as torch writes bytes; :func:`_called`
        refuses any other) of numbers and strings; for them called on anything else (``complex(tensor)``),
        a key of its own and one hash for all, as its value is not known; otherwise equal for equal calls."""
        args = items[0].items if len(items) == 1 and items[0].items is not None else items
        scalars = [item.scalar for item in args]
        if name in (_COMPLEX + _ENCODE) and (_UNSET in scalars or not args):
            cell.key, cell.hash = self.number(None), hash(_COMPLEX + _ENCODE)
        elif name in _CONTAINERS:
            return
        elif name in (_COMPLEX + _ENCODE):
            try:
                cell.scalar = (complex if name in _COMPLEX else codecs.encode)(*scalars)
            except Exception:  # torch.load meets the same error
                return
            cell.key, cell.length = None, len(cell.scalar) if isinstance(cell.scalar, bytes) else 0
        else:
            keys = [self.identify(item) for item in items]
            if _UNHASHABLE not in keys:
                described = b"c" + (name or "").encode() + b"\0" + array.array("q", keys).tobytes()
                cell.key = self.number(described)
                cell.hash = hash(described)

    def tally(self, cell: _Cell, items: list[_Cell]) -> None:
        """Count in container ``cell`` its new ``items`` (keys, list or tuple items) and the first
        items of those that are pairs; past :data:`MAX_COLLIDING` different keys of one hash in
        either, raise :class:`Colliding`. Strings and bytes are left out: Python randomises
        their hashes."""
        if cell.tally is None:
            cell.tally = ({}, {})
        for item in items:
            if item.first is not None:
                self._count(cell.tally[1], item.first)
            elif item.source is not None:  # a set of two values is a pair too, either first
                self._merge(cell.tally[1], item.source, few=True)
            elif item.key == _UNHASHABLE and item.items is None:  # a list or mapping given its first item later
                item.parents = item.parents or []
                item.parents.append(cell)
            self._count(cell.tally[0], item)

    def filled(self, cell: _Cell, items: list[_Cell]) -> None:
        """List or mapping ``cell`` is given ``items`` (its keys): a first one counts as a pair's
        first item in the containers it went into."""
        if items and cell.first is None:
            cell.first = items[0]
            for parent in cell.parents or ():
                self._count(parent.tally[1], cell.first)
            cell.parents = None
        self.tally(cell, items)

    def built(self, cell: _Cell, state: _Cell) -> None:
        """``BUILD`` updates ``cell``'s attributes from ``state``: a mapping, or pairs (a list or
        tuple of them, which ``dict.update`` takes too), or a pair of those (attributes and
        slots). Their keys of one hash add up, however many updates they come from, so all
        ``state`` may hand over (its keys or items, and its items' first items) counts."""
        if cell.tally is None:
            cell.tally = ({}, {})
        for part in _parts(state):
            self._merge(cell.tally[0], part)

    def _merge(self, seen: dict[int, int | set[int]], source: _Cell, few: bool = False) -> None:
        """Count in ``seen`` the values ``source`` holds (items or keys) and their first items;
        with ``few``, only a part of at most two different values: more make no pair."""
        if source.items is not None and source.tally is None:  # a tuple, counted once
            self.tally(source, source.items)
        for part in source.tally or ():
            if few and (len(part) > 2 or sum(len(k) if isinstance(k, set) else 1 for k in part.values()) > 2):
                continue
            for hash_, keys in part.items():
                for key in keys if isinstance(keys, set) else (keys,):
                    self._add(seen, hash_, key)

    def _count(self, seen: dict[int, int | set[int]], item: _Cell) -> None:
        if isinstance(item.scalar, (str, bytes)) or self.identify(item) == _UNHASHABLE:
            return
        self._add(seen, item.hash, item.key)

    @staticmethod
    def _add(seen: dict[int, int | set[int]], hash_: int, key: int) -> None:
        found = seen.get(hash_)
        if found is None:
            seen[hash_] = key
        elif isinstance(found, int):
            if found != key:
                seen[hash_] = {found, key}
        else:
            found.add(key)
            if len(found) > MAX_COLLIDING:
                raise Colliding


def _called(func: _Cell, args: _Cell) -> tuple[_Cell, _Cell]:
    """``func`` and ``args``, or :class:`Unread` for a call of a global not in :data:`_CALLED`, or one
    handed what torch.save never hands it (:func:`_handed_as_written`)."""
    if func.name is None:
        raise Unread(f"it calls {_what(func)}, where torch.save calls globals only")
    if func.name not in _CALLED:
        raise Unread(f"it calls {_dotted(func.name)}, which torch.save writes as a value, never calls")
    _handed_as_written(func.name, args)
    return func, args


def _handed_as_written(name: str, args: _Cell) -> None:
    """:class:`Unread` unless call ``name`` is handed a tuple of what torch.save hands it:
    ``OrderedDict()`` nothing (its items are set after; older torch wrote one new list of pairs),
    ``set()`` one new list, ``complex()`` numbers, ``_codecs.encode()`` a string and ``"latin1"``
    (another codec makes more than it is given: ``hex`` twice as much, and its result may be encoded
    again), a rebuild a storage (``_rebuild_parameter`` a rebuilt tensor) and, after it, no storage or
    tensor. Each iterates or reads what it is handed: ``set()`` or ``OrderedDict()`` of a tensor (or of
    a list holding one, as a pair) iterates every value it passes for, which a view of one stored zero
    makes billions, and ``set()`` of a storage hashes every value it holds."""
    items = args.items
    if items is None:
        raise Unread(f"it calls {_dotted(name)} on {_what(args)}, where torch.save writes a tuple of arguments")
    if name in _ENCODE:
        if len(items) != 2 or not isinstance(items[0].scalar, str) or items[1].scalar != _LATIN_1:
            raise Unread("it calls _codecs.encode() other than on a string to latin1, as torch.save writes bytes")
        return
    if name == "collections OrderedDict":  # pickles of older torch name the pairs: OrderedDict([[k, v], ...])
        expected = not items or (len(items) == 1 and items[0].made == "EMPTY_LIST" and not items[0].iterable)
    elif name == "builtins set":
        expected = len(items) == 1 and items[0].made == "EMPTY_LIST"
    elif name in _COMPLEX:
        expected = 0 < len(items) < 3 and all(type(item.scalar) in (int, float) for item in items)
    else:  # a rebuild: what it rebuilds first, then sizes, strides, flags and hooks
        first = ("BINPERSID",) if name != "torch._utils _rebuild_parameter" else _REBUILDS
        expected = bool(items) and items[0].made in first
        expected = expected and not any(item.made == "BINPERSID" or item.made in _REBUILDS for item in items[1:])
    if not expected:
        raise Unread(f"it calls {_dotted(name)} on {', '.join(map(_what, items)) or 'nothing'}, which torch.save "
                     "never hands it")  # fmt: skip


def _what(cell: _Cell) -> str:
    """What ``cell`` is, in a few words, for a refusal."""
    if cell is None:
        return "a mark"
    if cell.scalar is not _UNSET:
        return f"a {type(cell.scalar).__name__}"
    if cell.made in _REBUILDS:
        return "a tensor"
    kinds = {"BINPERSID": "a storage", "EMPTY_LIST": "a list", "EMPTY_DICT": "a mapping", "EMPTY_SET": "a set"}
    if cell.made in kinds:
        return kinds[cell.made]
    if cell.items is not None:
        return "a tuple"
    return f"the result of {_dotted(cell.made)}" if cell.made else _dotted(cell.name)


def _torch_refuses(arg: str) -> bool:
    """Whether ``torch.load(weights_only=True)`` refuses the global ``arg`` (``"module name"``) itself,
    read as it reads it."""
    from torch import _weights_only_unpickler as unpickler

    module, _, name = arg.partition(" ")
    module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
    allowed = unpickler._get_allowed_globals().keys() | unpickler._get_user_allowed_globals().keys()
    return f"{module}.{name}" not in allowed


def _dotted(name: str | None) -> str:
    return name.replace(" ", ".") if name else "an object that is no global"


def _named_storage(pid: _Cell, storages: dict[str, tuple[str, int]]) -> None:
    """Add to ``storages`` the storage persistent id ``pid`` names: ``("storage", type, key,
    location, values)`` as torch.save writes it (the legacy format adds a view after them, ``None``
    or ``(key, offset, values)``); :class:`Unread` for any other, or a key declared twice otherwise:
    a storage is checked against its record by its key and size (:func:`~.untrusted.check_declared`),
    and torch reads ``b"storage"``, a key of any type, and a size that is a tensor all the same."""
    items = pid.items or ()
    shaped = len(items) in (5, 6) and type(items[0].scalar) is str and items[0].scalar == "storage"
    shaped = (
        shaped
        and bool(_STORAGES.fullmatch(items[1].name or ""))
        and type(items[2].scalar) is str
        and type(items[3].scalar) is str
    )
    shaped = shaped and type(items[4].scalar) is int
    if shaped and len(items) == 6 and items[5].scalar is not None:  # a legacy view
        view = items[5].items or ()
        shaped = len(view) == 3 and type(view[0].scalar) is str and all(type(v.scalar) is int for v in view[1:])
    if not shaped:
        raise Unread(f"it names a storage by {_what(pid)} other than as torch.save does (\"storage\", its type, key, "
                     "location and size)")  # fmt: skip
    declared = (items[1].name.split()[-1], items[4].scalar)
    if storages.setdefault(items[2].scalar, declared) != declared:
        raise Unread(f"it declares storage {items[2].scalar!r} twice, as {storages[items[2].scalar]} and {declared}")


def _built_as_written(target: _Cell, state: _Cell) -> None:
    """:class:`Unread` unless ``BUILD`` sets attributes of an ``OrderedDict()`` from a mapping, as torch.save
    writes a state dict's ``_metadata``: on a tensor torch re-views it over any storage, and it iterates a
    state that is no mapping (a tensor's rows, each value a view of one stored zero passes for)."""
    if target is None or state is None or target.made != "collections OrderedDict" or state.made != "EMPTY_DICT":
        raise Unread(f"it sets attributes of {_what(target)} from {_what(state)}, where torch.save sets an "
                     "OrderedDict's from a mapping")  # fmt: skip


def _parts(cell: _Cell) -> list[_Cell]:
    """``cell`` and, for a pair, its two items: what ``BUILD`` may read as attributes and slots."""
    return [cell, *cell.items] if cell.items is not None and len(cell.items) == 2 else [cell]


def _scalar_bytes(value: object) -> bytes | None:
    """Bytes equal for equal scalars (``1 == 1.0 == True == 1 + 0j``); ``None`` for a NaN."""
    if isinstance(value, complex):
        if value.imag:
            if value != value:
                return None
            return b"j" + struct.pack("<dd", value.real + 0.0, value.imag + 0.0)
        value = value.real
    if isinstance(value, float):
        if value != value:
            return None
        if not value.is_integer():
            return b"f" + struct.pack("<d", value)
        value = int(value)
    if isinstance(value, int):
        return b"i" + value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return b"b" + value
    return b"n"  # None


def scan(stream, count: int, bound: int, storages: dict[str, tuple[str, int]]) -> int:
    """The values the tuples of the first ``count`` pickles of the binary ``stream`` hand on, as
    far as they read as opcodes; :class:`CalledTooMuch` once the lists and mappings handed to
    calls (see :func:`~.untrusted.check_pickle`) come to more than ``bound`` items. Each object on the stack is a
    cell (:class:`_Cell`) shared with the memo: a list or a mapping filled with tuples (or an
    object built from them) handed on again, to ``set()`` say, which hashes them all, counts
    them again as a tuple does. Each list, mapping and tuple counts the different values of
    each hash it is given (:meth:`_Numbering.tally`): ``set()`` and
    ``OrderedDict()`` hash a list's or tuple's items, a mapping hashes its keys; equal values
    (a list of zeros, equal shapes) count once, as they take one place in a mapping. ``storages``
    is given the storages torch's persistent ids name, key → (storage type, values), the first
    id of each key."""
    handed, called, numbering = 0, 0, _Numbering()
    for _ in range(count):
        stack: list[_Cell | None] = []  # None for a mark
        memo: dict[int, _Cell | None] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = stack[-1]
                elif name == "MEMOIZE":
                    memo[len(memo)] = stack[-1]
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo[arg])
                    handed += memo[arg].size if memo[arg] else 0
                elif name in ("MARK", "DUP"):
                    stack.append(None if name == "MARK" else stack[-1])
                elif name in _CONSTANTS or (opcode.stack_after and opcode.stack_after[0] in _SCALARS):
                    cell = _Cell(key=None)
                    cell.scalar = _CONSTANTS.get(name, arg)
                    cell.length = len(arg) if isinstance(arg, (str, bytes)) else 0  # what complex(s), set(s) read
                    stack.append(cell)
                elif name in ("GLOBAL", "INST"):
                    cell = _Cell()
                    cell.name = " ".join(arg.split()).replace("__builtin__ ", "builtins ")
                    if cell.name not in _ALLOWED and not _STORAGES.fullmatch(cell.name):
                        if _torch_refuses(arg):  # it names it there in its own words, and builds nothing after
                            return handed
                        raise Unread(
                            f"it names {_dotted(cell.name)}, which torch.save never writes for a network's weights"
                        )
                    cell.key, cell.hash = numbering.number(b"g" + cell.name.encode()), hash(cell.name)
                    stack.append(cell)
                else:
                    popped, fixed = [], len(opcode.stack_before)
                    if pickletools.stackslice in opcode.stack_before:  # the items down to the mark, and the mark
                        while stack[-1] is not None:
                            popped.append(stack.pop())
                        stack.pop()
                        fixed -= 2
                    popped += [stack.pop() for _ in range(fixed)]
                    popped.reverse()  # as they were pushed: a filled object first, then what fills it
                    if name in _TUPLES:
                        cell = _Cell(1 + sum(max(c.size, 1) for c in popped))
                        cell.items = popped
                        handed += cell.size
                        numbering.tuple_of(cell, popped)
                        cell.first = popped[0] if len(popped) == 2 else None
                        if len(popped) > MAX_COLLIDING:  # fewer cannot hold too many of one hash
                            numbering.tally(cell, popped)
                    elif name in _FILLS:
                        cell = popped[0]
                        cell.size += sum(c.size for c in popped[1:])
                        if name == "BUILD":
                            _built_as_written(popped[0], popped[1])
                            called += sum(c.length + len(c.items or ()) for c in _parts(popped[1]))
                            if called > bound:  # before the keys are added: the bound keeps this linear
                                raise CalledTooMuch
                            numbering.built(cell, popped[1])
                        else:
                            cell.length += len(popped) // 2 if name.startswith("SET") else len(popped) - 1
                            if name.startswith("APPEND"):
                                cell.iterable |= any(c.made in (*_REBUILDS, "BINPERSID") for c in popped[1:])
                            numbering.filled(cell, popped[1::2] if name.startswith("SET") else popped[1:])
                    elif name in ("REDUCE", "NEWOBJ"):  # what a call makes holds what it was given
                        cell = _Cell(sum(c.size for c in popped))
                        func, args = _called(*popped)
                        cell.made = func.name
                        numbering.made(cell, func.name, [args])
                        read = sum(c.length for c in args.items or ())
                        if func.name in _CONTAINERS:  # set(L) holds what L does
                            cell.length = read
                            cell.source = args.items[0] if len(args.items or ()) == 1 else None
                        called += read
                        if called > bound:
                            raise CalledTooMuch
                    else:  # a new list, mapping or set, or a storage (torch's persistent id)
                        cell = _Cell(sum(c.size for c in popped))
                        cell.made = name
                        if name == "BINPERSID":
                            numbering.made(cell, name, popped)
                            _named_storage(popped[0], storages)
                    stack += [cell] * len(opcode.stack_after)
        except (Colliding, CalledTooMuch, Unread):
            raise
        except Exception:  # torch.load says what it is, no later: what came before is counted all the same
            return handed
    return handed
