"""``cnnsuite predict``: a checkpoint's predictions for raw files, without a config.

    cnnsuite predict --ckpt runs/<task>/version_0/checkpoints/best.ckpt --input photos/ --out preds/

The checkpoint rebuilds its model and the run's test preprocessing by itself
(:func:`~cnnsuite.trust.checkpoint.rebuild_for_inference`); each task says how to read one file
(``TaskDataModule.read_input``) and how to describe and draw one prediction
(``TaskModule.describe_outputs``, ``render_prediction``). Everything else is here, once, for
every task: finding the inputs in a folder, batching, ``predictions.jsonl`` (one line per
input: its path and prediction, or the error that kept it from being read), one picture per
input under ``pictures/``, and a summary line. ``cnnsuite serve`` answers with the same lines.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import torch

from ..data.errors import BadFileError
from ..data.folders import lies_within, walk
from ..data.inputs import Input
from ..errors import ConfigError, MissingFileError
from ..jsonout import first_non_finite
from ..training.runs import default_output, output_folder
from ..trust.checkpoint import rebuild_for_inference


def device_for(accelerator: str) -> torch.device:
    """Where ``--accelerator`` runs the network: a GPU when it names one, or when it is ``auto``
    and there is one; else the CPU."""
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_gpu else "cpu")


class Predictor:
    """A checkpoint ready to predict raw files: its model and the run's test preprocessing."""

    def __init__(self, ckpt_path: str | Path, accelerator: str = "auto") -> None:
        self.ckpt_path = Path(ckpt_path)
        self.model, self.datamodule = rebuild_for_inference(ckpt_path)
        self.model.to(device_for(accelerator))

    def read(self, path: str | Path) -> Input:
        """One file as the model's input; an unreadable file raises :class:`BadFileError` naming it."""
        path = Path(path)
        if not path.exists():
            raise BadFileError(f"{path}: no such file")
        try:
            item = self.datamodule.read_input(path)
        except (BadFileError, NotImplementedError):  # a RuntimeError, but the task's bug, not the file's
            raise
        except (OSError, RuntimeError, ValueError) as err:  # a reader's own error, made to name the file
            raise BadFileError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
        self.model.check_input(item)
        return item

    def predict(self, inputs: list[Input], network: Callable | None = None) -> list[dict]:
        """One prediction per input (``network``: see :meth:`TaskModule.predict_inputs`)."""
        return self.model.predict_inputs(inputs, network) if inputs else []

    def find_inputs(self, root: str | Path) -> tuple[list[Path], list[Path]]:
        """``(inputs, ignored files)`` under ``root``: ``root`` itself when it is one input (a
        file, a DICOM series folder), else every input in it and its sub-folders, sorted."""
        root = Path(root)
        if not root.exists():
            raise MissingFileError(f"--input {root}: no such file or folder")
        if root.is_file() or self.datamodule.is_input(root):
            return [root], []
        inputs, ignored, folders = [], [], set()
        for path in walk(root):
            if folders and any(parent in folders for parent in path.parents):
                continue  # a file of a series folder already taken whole
            if self.datamodule.is_input(path):
                inputs.append(path)
                if path.is_dir():
                    folders.add(path)
            elif path.is_file() and not path.name.startswith("."):
                ignored.append(path)
        return inputs, ignored

    def run(self, paths: Iterable[Path], batch_size: int = 16) -> Iterator[tuple[Input | None, dict]]:
        """``(input, record)`` per path, in order: ``record`` is ``{"path", **prediction}``, or
        ``{"path", "error"}`` for a file that could not be read (the others go on)."""
        batch: list[Input] = []
        for path in paths:
            try:
                batch.append(self.read(path))
            except BadFileError as err:
                yield from self._flush(batch)
                batch = []
                yield None, {"path": str(path), "error": str(err)}
                continue
            if len(batch) >= batch_size:
                yield from self._flush(batch)
                batch = []
        yield from self._flush(batch)

    def _flush(self, batch: list[Input]) -> Iterator[tuple[Input | None, dict]]:
        for item, prediction in zip(batch, self.predict(batch), strict=True):
            record = self.record(item, prediction)
            yield (None if "error" in record else item), record

    @staticmethod
    def record(item: Input, prediction: dict) -> dict:
        """``{"path", **prediction}``; a prediction holding NaN or infinity is that input's
        error instead (strict JSON has no such numbers, and no use could be made of them)."""
        bad = first_non_finite(prediction)
        if bad is not None:
            return {"path": str(item.path), "error": f"{item.path}: the model's output is not finite ({bad})"}
        return {"path": str(item.path), **prediction}


#: the most bytes of a picture's name before its number and ``.png`` (file systems take 255)
PICTURE_STEM_BYTES = 200


def shortened(stem: str) -> str:
    """``stem`` in at most :data:`PICTURE_STEM_BYTES` bytes: a longer one keeps its end (the
    input's own name), after ``…``, cut at a character's start."""
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) <= PICTURE_STEM_BYTES:
        return stem
    tail = raw[len(raw) - PICTURE_STEM_BYTES + len("…".encode()) :]
    while tail and 0x80 <= tail[0] < 0xC0:  # a continuation byte: the character began before the cut
        tail = tail[1:]
    return "…" + tail.decode("utf-8", "surrogateescape")


def picture_names(paths: list[Path], root: Path) -> dict[Path, str]:
    """A flat, unique PNG name for each of ``paths`` (inputs under the folder ``root``): the
    path relative to ``root`` with ``__`` for its separators and ``.png`` for its suffix
    (``cats/tom.jpg`` → ``cats__tom.png``); inputs that would share a name (``tom.jpg`` and
    ``tom.png``) keep their own suffix before it (``tom.jpg.png``), and a name still shared
    (``a/b.png`` and ``a__b.png``) is numbered after the first (``a__b.png-2.png``); a name
    too long for a file system keeps its end (:func:`shortened`)."""
    relative = {p: p.relative_to(root) if p != root and root in p.parents else Path(p.name) for p in paths}
    stems = {p: "__".join(r.with_suffix("").parts) for p, r in relative.items()}
    counts = Counter(stems.values())
    names, used = {}, set()
    for p in paths:
        stem = shortened(stems[p] if counts[stems[p]] == 1 else "__".join(relative[p].parts))
        name, number = f"{stem}.png", 1
        while name in used:
            number += 1
            name = f"{stem}-{number}.png"
        names[p] = name
        used.add(name)
    return names


def predict_to_folder(
    predictor: Predictor,
    input_path: str | Path,
    out_dir: str | Path,
    batch_size: int = 16,
    pictures: bool = True,
    given: bool = True,
) -> tuple[dict, list[str]]:
    """Predict every input under ``input_path`` into ``out_dir``: ``predictions.jsonl``,
    ``pictures/`` and ``summary.json``. Returns the summary and the errors of the inputs that
    could not be read. ``given``: the user named ``out_dir``
    (:func:`~cnnsuite.training.runs.output_folder`)."""
    input_path, out_dir = Path(input_path), Path(out_dir)
    inputs, ignored = predictor.find_inputs(input_path)
    if input_path.is_dir() and lies_within(out_dir, input_path):
        raise ConfigError(
            f"--out {out_dir}: inside the input folder {input_path}, where the pictures would replace inputs of "
            "the same names and be read as inputs by the next run; name a folder outside it"
        )
    output_folder(out_dir, given, marker="summary.json")
    clear_earlier_pictures(out_dir)
    if pictures:
        output_folder(out_dir / "pictures", given=False)
    root = input_path if input_path.is_dir() else input_path.parent
    names = picture_names([Path(p) for p in inputs], root)
    failed = []
    with (out_dir / "predictions.jsonl").open("w") as lines:
        for item, record in predictor.run(inputs, batch_size):
            lines.write(json.dumps(record, allow_nan=False) + "\n")
            if item is None:
                failed.append(record)
            elif pictures:
                shown = replace(item, path=Path(printable(str(item.path))))  # its title
                predictor.model.render_prediction(shown, record, out_dir / "pictures" / names[Path(item.path)])
    summary = {
        "checkpoint": str(predictor.ckpt_path),
        "input": str(input_path),
        "predicted": len(inputs) - len(failed),
        "failed": [record["path"] for record in failed],
        "ignored": [str(p) for p in ignored],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return summary, [record["error"] for record in failed]


def clear_earlier_pictures(out_dir: Path) -> None:
    """A folder an earlier ``predict`` wrote (its ``summary.json`` says so) loses that run's
    pictures before this one writes: predicting another folder of the same name into the same
    default place would otherwise leave the earlier run's pictures beside the new ones. Only
    files directly in ``pictures/`` go (:func:`~cnnsuite.training.runs.output_folder` refused
    it as a link; a picture that is one loses the link, not what it leads to)."""
    folder = out_dir / "pictures"
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return
    ours = isinstance(summary, dict) and {"checkpoint", "input", "predicted", "failed"} <= summary.keys()
    if ours and folder.is_dir():
        for picture in folder.glob("*.png"):
            if picture.is_file() or picture.is_symlink():
                picture.unlink()


def printable(text: str) -> str:
    """``text`` as a terminal or a picture can show it: a file name in another system's
    encoding (Latin-1 ``café.png``) keeps its bytes as lone surrogates, which matplotlib and a
    UTF-8 terminal refuse; each such byte is shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def summary_line(summary: dict, out_dir: Path, takes: str, errors: list[str]) -> str:
    """What a prediction did, for the terminal; ``takes``: what the model reads, in words,
    said where nothing given was one; ``errors``: why the inputs that failed did, the one
    said where one failed (each is in ``predictions.jsonl``)."""
    inputs = summary["predicted"] + len(summary["failed"])
    if inputs:
        line = f"predicted {summary['predicted']} of {inputs} inputs"
    else:
        line = f"no file this model takes (expected {takes})"
    if len(errors) == 1:
        line += f"; 1 could not be read: {errors[0]}"
    elif summary["failed"]:
        line += f"; {len(summary['failed'])} could not be read: {', '.join(summary['failed'])}"
    if summary["ignored"]:
        line += f"; ignored {len(summary['ignored'])} files of other types"
    return printable(f"{line}\npredictions: {out_dir}/predictions.jsonl")


def predict_main(argv: list[str]) -> None:
    from ..commands import LIGHTNING_PREDICT, add_accelerator, add_out, command_parser

    parser = command_parser(
        "predict",
        description="Predict raw files with a checkpoint, preprocessed as its run's test split: predictions.jsonl, "
        "one picture per input, summary.json.",
        epilog=LIGHTNING_PREDICT,
    )
    parser.add_argument("--input", required=True, help="a file, a DICOM series folder, or a folder of inputs")
    add_out(parser, "output folder (default: <run folder>/predictions/<input name>)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--no_pictures", action="store_true", help="write predictions.jsonl only")
    add_accelerator(parser)
    if any(a in ("-c", "--config") or a.startswith("--config=") for a in argv):
        parser.error(f"--config: cnnsuite predict takes a checkpoint and files (--ckpt, --input). {LIGHTNING_PREDICT}")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size {args.batch_size}: expected a count of inputs a batch, 1 or more")
    if args.out:
        out_dir = Path(args.out)
    else:  # the run's predictions/ folder, not a link, and in it one folder an input
        out_dir = output_folder(default_output(args.ckpt, "predictions"), given=False) / Path(args.input).name
    predictor = Predictor(args.ckpt, args.accelerator)
    summary, errors = predict_to_folder(
        predictor, args.input, out_dir, args.batch_size, not args.no_pictures, bool(args.out)
    )
    line = summary_line(summary, out_dir, predictor.datamodule.inputs_taken(), errors)
    if not summary["predicted"]:  # exit status 2: a script chaining on it must not take this for a result
        raise ConfigError(f"--input {args.input}: " + line.replace("\n", "; "))
    print(line)
