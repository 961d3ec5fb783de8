"""One raw file made ready for a model: what prediction, serving and export pass around."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Input:
    """A file read by :meth:`~cnnsuite.data.TaskDataModule.read_input`.

    ``sample`` is what the network takes (one image ``(C, H, W)``, a volume, a video's clips
    ``(n, C, T, H, W)`` ...), preprocessed as the run's test split; ``meta`` holds JSON-able
    facts about the original that the prediction is expressed in (its pixel size, say);
    ``view`` is what a picture of the prediction shows (the image before normalisation, a
    true-colour composite ...), or None where ``sample`` itself can be shown.
    """

    path: Path
    sample: Any
    meta: dict = field(default_factory=dict)
    view: Any = None
