"""Mistakes a user can make, told apart from bugs by their type.

Every error a user's config, command line, data or files can cause is a :class:`UserError`:
the CLI prints its message as one line and exits with status 2 (``--debug`` shows the
traceback). Any other exception is a bug and keeps its traceback. Each kind also derives from
the built-in error it used to be (``ValueError``, ``FileNotFoundError`` ...), so code that
catches those keeps working.
"""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A mistake a user can make and fix; the message names the key or file and what was expected."""


class ConfigError(UserError, ValueError):
    """A setting (a config key, a command-line option) with a value that cannot be used."""


class BadFileError(UserError, ValueError):
    """A user's file that cannot be read as what it should be; the message names it."""


class CheckpointError(BadFileError):
    """A checkpoint that cannot be used as it is; the message names the file and what is wrong."""


class StateError(UserError):
    """A datamodule state (what preprocessing learnt: band names, statistics) in a form that
    cannot be used, found where a checkpoint's or a prepared folder's is restored; the caller,
    which knows the file, names it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named that is not there."""


class DivergedError(UserError, FloatingPointError):
    """Training that produced a non-finite loss: a setting (learning rate, say) to change."""


def describe_unknown(key: str, candidates: list[str]) -> str:
    """``unknown key KEY: did you mean A, B or C?``, the closest keys of its own group where
    the group is a real one (``trainer.max_epocs``: among ``trainer.*``), and those whose name
    starts with the same words (``on_bad_annotation``: ``on_bad_file``, one task's name for
    another's option); an abbreviation says it is one."""
    abbreviated = [c for c in candidates if c.startswith(key)]
    group, dot, leaf = key.rpartition(".")
    leaves = {c[len(group) + 1 :]: c for c in candidates if dot and c.startswith(group + dot)}
    if leaves:
        close = [leaves[k] for k in difflib.get_close_matches(leaf, leaves, n=3, cutoff=0.6)]
        words = leaf.split("_")[:2]
        close += [c for k, c in sorted(leaves.items()) if len(words) == 2 and k.split("_")[:2] == words]
    else:
        close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    close = list(dict.fromkeys(abbreviated[:1] + close))[:3]
    text = f"unknown key {key}" + (" (options are not abbreviated)" if abbreviated else "")
    if not close:
        return text
    return f"{text}: did you mean {close[0] if len(close) == 1 else ', '.join(close[:-1]) + ' or ' + close[-1]}?"


def printable(text: str, keep: str = "\n") -> str:
    """``text`` with its control characters but ``keep`` shown escaped, not obeyed: what a message
    or a table quotes may come from a file or a database others write (a checkpoint's recorded
    folder, a shared study's names), and a terminal's colour, title and cursor codes among them
    would reach the user's terminal."""
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode() for c in text)
