"""Mistakes a user can make, told apart from bugs by their type.

Every error a user's config, command line, data or files can cause is a :class:`UserError`:
the CLI prints its message as one line and exits with status 2 (``--debug`` shows the
traceback). Any other exception is a bug and keeps its traceback. Each kind also derives from
the built-in error it used to be (``ValueError``, ``FileNotFoundError`` ...), so code that
catches those keeps working.
"""

from __future__ import annotations


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
