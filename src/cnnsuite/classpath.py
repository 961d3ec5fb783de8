"""The dotted path of a class, as configs (``class_path``), checkpoints and prepared folders
name it: what :mod:`cnnsuite.contract` matches against the registered tasks' classes."""

from __future__ import annotations


def class_path(obj: object) -> str:
    """``module.QualifiedName`` of ``obj``'s class (or of ``obj``, a class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
