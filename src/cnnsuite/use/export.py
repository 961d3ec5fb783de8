"""``cnnsuite export``: a checkpoint's network as an ONNX file or a ``torch.export`` program.

    cnnsuite export --ckpt runs/<task>/version_0/checkpoints/best.ckpt --format onnx
    cnnsuite export --ckpt best.ckpt --format torch-export --out lenet.pt2

What is written is the task's :meth:`~cnnsuite.training.task.TaskModule.inference_network` — the
network prediction runs, with a free batch size and the run's preprocessed sample size —
traced once by ``torch.export`` and, for ONNX, translated by the dynamo exporter. Beside it,
``<name>.json`` (``model.onnx.json``) says what a user must feed it: the input shape and dtype, what its channels
are, the preprocessing and normalisation of the run's test split, the class names, and what
each output means. What the file cannot hold (reading files, decoding boxes, NMS, averaging a
video's clips) stays in the task's ``describe_outputs``: :class:`OnnxNetwork` runs an ONNX
file where the torch network ran, so its predictions go through the same description.

Every export is checked before it is kept: the file is loaded back (ONNX Runtime on CPU, or
``torch.export.load``) and run on a batch of another size than the one traced, with real
files (``--input``) or random inputs (of the data's input shape, or of the size a model brings
every input to), and on the traced batch (:func:`example_batch`), against the PyTorch network;
an output further than ``--tolerance`` from PyTorch's, or a run that fails, deletes the file
and fails.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..classpath import class_path
from ..contract import task_of
from ..data import TaskDataModule
from ..errors import CheckpointError, ConfigError
from ..training.runs import output_folder, run_folder
from ..training.task import TaskModule
from .predict import Predictor

#: format → file ending
FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
#: the largest difference allowed between the exported network's outputs and PyTorch's
TOLERANCE = 1e-4
#: the oldest ONNX opset torch.onnx writes itself (it converts to older ones, which fails for most networks)
MIN_OPSET = 18
#: the batch sizes of the traced example and of the check (different: the batch axis must stay free)
EXAMPLE_BATCH, CHECK_BATCH = 2, 3


class OnnxNetwork:
    """An ONNX file as a network: a batch tensor in, a tuple of tensors out (ONNX Runtime),
    so that ``model.predict_inputs(inputs, network=OnnxNetwork(path))`` predicts through the
    task's own ``describe_outputs``."""

    def __init__(self, path: str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime

        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(self.path), providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # ONNX Runtime reads the buffer as it lies: a channels-last tensor must be made contiguous
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return tuple(torch.from_numpy(out) for out in self.session.run(None, {self.input_name: array}))


class ExportedNetwork:
    """A ``.pt2`` file written by ``torch.export.save`` as a network, like :class:`OnnxNetwork`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.module = torch.export.load(self.path).module()

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return output_tuple(self.module(batch.detach().to("cpu", torch.float32)))


def output_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def export_main(argv: list[str]) -> None:
    from ..commands import add_out, command_parser

    parser = command_parser(
        "export",
        description="Export a checkpoint's network to ONNX or torch.export, with <name>.json beside it (input "
        "shape, channels, normalisation, class names, outputs), checked against PyTorch before it is kept.",
    )
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default=None,
        help="onnx (the default) or torch-export; by default the one --out's extension names (.onnx, .pt2)",
    )  # fmt: skip
    add_out(parser, "file to write (default: <run folder>/export/model.onnx or .pt2, else beside the checkpoint)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, 18 or later (default: the exporter's)")
    parser.add_argument(
        "--input", nargs="+", default=None,
        help="files to check the export on, read as the run's test split (default: random samples)",
    )  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help=f"largest difference (default {TOLERANCE})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file named by --out")
    args = parser.parse_args(argv)
    args.format = args.format or format_of(args.out)
    if args.opset is not None and args.format != "onnx":
        parser.error("--opset applies to --format onnx only")
    path, info = export(args.ckpt, args.format, args.out, args.opset, args.input, args.tolerance, args.force)
    print(summary_line(path, info))


def format_of(out: str | None) -> str:
    """The format ``--out``'s extension names (``m.pt2``: torch-export), else ONNX."""
    suffix = Path(out).suffix.lower() if out else ""
    return next((fmt for fmt, ext in FORMATS.items() if ext == suffix), "onnx")


def export(
    ckpt_path: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    opset: int | None = None,
    inputs: list[str | Path] | None = None,
    tolerance: float = TOLERANCE,
    force: bool = False,
) -> tuple[Path, dict]:
    """Export ``ckpt_path``'s inference network to ``out`` (see the module's docstring);
    returns the file written and what the JSON beside it holds."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    named = format_of(str(out)) if out is not None and Path(out).suffix.lower() in FORMATS.values() else fmt
    if named != fmt:  # a .pt2 holding ONNX, or the other way, is read by neither loader
        raise ConfigError(f"--out {out}: a {named} file's name, for --format {fmt}; name it {FORMATS[fmt]}")
    check_opset(opset)
    if not tolerance >= 0:  # NaN too: no difference would be within it
        raise ConfigError(f"--tolerance {tolerance}: expected the largest difference allowed, 0 or more")
    path = output_path(ckpt_path, fmt, out, force)
    predictor = Predictor(ckpt_path, accelerator="cpu")
    model, datamodule = predictor.model, predictor.datamodule
    network = model.inference_network().eval()
    check_batch, check_source = check_inputs(predictor, inputs)
    example = example_batch(check_batch, model)
    with torch.no_grad():
        expected = output_tuple(network(check_batch))
        expected_example = output_tuple(network(example))
    # finite weights can still overflow (a float32 kernel scaled by 1e38): no export can agree with NaN
    if not all(bool(torch.isfinite(t).all()) for t in (*expected, *expected_example)):
        raise CheckpointError(
            f"{ckpt_path}: its network's own outputs are not finite (NaN or infinity) on {check_source}; "
            "nothing was written"
        )
    names = output_names(model, len(expected))
    start = time.perf_counter()
    program = trace(network, example, ckpt_path, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{FORMATS[fmt]}")  # torch.export.load wants .pt2
    try:
        if fmt == "onnx":
            onnx_program = torch.onnx.export(
                program, dynamo=True, opset_version=opset, input_names=["input"], output_names=names, verbose=False
            )
            onnx_program.save(partial, external_data=False)
            name_batch_axis(partial)
            seconds = time.perf_counter() - start
            written = onnx_opset(partial)
            if opset is not None and written != opset:  # torch.onnx keeps its own where it cannot honour one
                raise ConfigError(f"--opset {opset}: torch.onnx wrote opset {written} instead; nothing was written")
            exported, opset = OnnxNetwork(partial), written
        else:
            torch.export.save(program, partial)
            seconds = time.perf_counter() - start
            exported = ExportedNetwork(partial)
        if example.shape[2:] != check_batch.shape[2:]:  # the traced sizes are checked too
            check_source += f" and {len(example)} of {tuple(example.shape[1:])}"
        try:
            found, found_example = exported(check_batch), exported(example)
        except Exception as err:  # a guard torch.export kept, an ONNX Runtime shape error: the first line says which
            reason = str(err).strip().split("\n")[0][:300]
            raise ConfigError(
                f"{path}: the exported network does not run on {check_source} ({type(err).__name__}: {reason}); "
                "nothing was written"
            ) from err
        diffs = {
            name: max(max_difference(e, o), max_difference(x, y))
            for name, e, o, x, y in zip(names, expected, found, expected_example, found_example, strict=True)
        }
        worst = max(diffs.values())
        if not worst <= tolerance:  # NaN fails too
            raise ConfigError(
                f"{path}: the exported network differs from PyTorch's by up to {worst:.3g} (tolerance {tolerance:g}; "
                + ", ".join(f"{n} {d:.3g}" for n, d in diffs.items())
                + f") on {check_source}; nothing was written"
            )
        info = describe_export(model, datamodule, ckpt_path, path, fmt, opset, names, check_batch,
                               (expected, expected_example))  # fmt: skip
        info["check"] = {
            "inputs": check_source,
            "runtime": "onnxruntime (CPUExecutionProvider)" if fmt == "onnx" else "torch.export.load",
            "max_abs_diff": diffs,
            "tolerance": tolerance,
        }
        info["export_seconds"] = round(seconds, 2)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    sidecar(path).write_text(json.dumps(info, indent=1, allow_nan=False) + "\n")  # strict JSON: a program reads it
    return path, info


def output_path(ckpt_path: str | Path, fmt: str, out: str | Path | None, force: bool) -> Path:
    """``--out``, else ``<run folder>/export/model<ext>`` for a checkpoint in a run's
    ``checkpoints/`` folder, else ``<checkpoint name><ext>`` beside it. The run folder's own
    previous export is overwritten; any other file that exists (one the user named, or made
    beside the checkpoint) only with ``--force``, and the checkpoint itself never."""
    ckpt_path = Path(ckpt_path)
    if out is None and run_folder(ckpt_path) is not None:
        folder = output_folder(run_folder(ckpt_path) / "export", given=False)
        return folder / f"model{FORMATS[fmt]}"
    path = Path(out) if out is not None else ckpt_path.with_suffix(FORMATS[fmt])
    linked = [p for p in (path, sidecar(path)) if p.is_symlink()]
    if linked:  # --force would write where the link leads
        raise ConfigError(f"{linked[0]}: a symbolic link, which the export would write through; remove it")
    named = f"--out {path}" if out is not None else f"{path} (the export's name beside the checkpoint)"
    if ckpt_path.exists() and any(p.exists() and p.samefile(ckpt_path) for p in (path, sidecar(path))):
        raise ConfigError(f"{named}: the export would replace the checkpoint {ckpt_path}; name another file with --out")
    if path.is_dir() or str(out or "").endswith(("/", os.sep)):  # Path("new/") forgets the slash
        raise IsADirectoryError(f"--out {out}: is a folder; expected a file name such as {path / 'model'}")
    taken = [p for p in (path, sidecar(path)) if p.exists()]
    if taken and not force:
        also = "" if out is not None else " --out names another file,"
        verb = "exist" if len(taken) > 1 else "exists"
        raise FileExistsError(f"{named}: {' and '.join(map(str, taken))} {verb} already;{also} --force overwrites")
    return path


def sidecar(path: Path) -> Path:
    """The description beside an export: ``model.onnx.json`` (an ONNX file and a ``.pt2`` of
    the same name, as the two defaults are, each keep their own)."""
    return path.with_name(path.name + ".json")


def check_inputs(predictor: Predictor, inputs: list | None) -> tuple[torch.Tensor, str]:
    """The batch the export is traced on and checked with, and what it is: the ``inputs``
    files read as the run's test split and batched as prediction batches them, else
    ``CHECK_BATCH`` random inputs of the model's
    (:meth:`~cnnsuite.training.task.TaskModule.synthetic_inputs`: samples of the data's input
    shape, or of a size the model brings every input to)."""
    if inputs:
        items = [predictor.read(p) for p in inputs]
        batch = predictor.model.batch_inputs([item.sample for item in items]).float()
        return batch, f"{len(items)} files ({', '.join(map(str, inputs))})"
    generator = torch.Generator().manual_seed(0)
    batch = predictor.model.synthetic_inputs(predictor.datamodule, CHECK_BATCH, generator)
    if batch is None:
        raise ConfigError(
            f"{type(predictor.datamodule).__name__} has no fixed input shape: give --input with files to export "
            "and check on"
        )
    return batch, f"{CHECK_BATCH} random samples of {tuple(batch.shape[1:])}"


def example_batch(batch: torch.Tensor, model: TaskModule) -> torch.Tensor:
    """What :func:`trace` traces ``network`` on: the first sample of the check's ``batch``,
    :data:`EXAMPLE_BATCH` times (another batch size than the check's, so a network that fixes
    its batch size fails here or in the check, never in a user's hands), and each axis the
    task leaves free besides the batch tiled 3, 4, ... times over. ``torch.export`` specialises
    a size it sees equal to another, or of 1: a detector traced on its square canvas, whose
    deepest feature map is one cell there, ran on that canvas alone, though its file said the
    height and width were free. Tiled, the axes differ and every map is several cells."""
    example = batch[:1].expand(EXAMPLE_BATCH, *batch.shape[1:])
    free = sorted(set(model.inference_dynamic_shapes(torch.export.Dim("batch", min=1))) - {0})
    repeats = [1] * example.dim()
    for factor, axis in enumerate(free, start=3):
        repeats[axis] = factor
    return example.repeat(repeats)


def trace(network: nn.Module, example: torch.Tensor, ckpt_path: str | Path, model: TaskModule):
    """``torch.export`` of ``network`` on ``example`` (:func:`example_batch`) with the axes the
    task leaves free (:meth:`~cnnsuite.training.task.TaskModule.inference_dynamic_shapes`: the
    batch, and for a detector the padded height and width), the others fixed at its size.

    Parametrized weights (masked, tied, hypernetwork-made kernels) trace as they are: checked
    with LeNet-5's C3 table, a hypernetwork kernel and tied weights, they export and agree
    with PyTorch."""
    batch_dim = torch.export.Dim("batch", min=1)
    try:
        dynamic = model.inference_dynamic_shapes(batch_dim)
        return torch.export.export(network, (example,), dynamic_shapes=(dynamic,), strict=False)
    except Exception as err:  # torch.export raises several types; the first lines say where
        reason = " ".join(str(err).strip().split("\n")[:2])
        raise ConfigError(
            f"{ckpt_path}: torch.export cannot trace {type(model).__name__}.inference_network() for any batch "
            f"size ({type(err).__name__}: {reason})"
        ) from err


def max_difference(expected: torch.Tensor, found: torch.Tensor) -> float:
    if expected.shape != found.shape:
        return float("inf")
    return float((expected.float() - found.float()).abs().max()) if expected.numel() else 0.0


def name_batch_axis(path: Path) -> None:
    """Call the input's first axis ``batch`` in the file (the exporter names it after its
    internal symbol, ``s77`` say), in the inputs and outputs that have it."""
    import onnx

    model = onnx.load(str(path))
    symbol = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if symbol and dim.dim_param == symbol:
                dim.dim_param = "batch"
    onnx.save(model, str(path))


def check_opset(opset: int | None) -> None:
    """Refuse, before any work, an opset torch.onnx does not write: its exporter writes opset
    18 and later itself, and for an older one converts down with ONNX's version converter, which
    fails for most networks (a reduction's axes, in LeNet-5 at 17) with a logged traceback and
    the file quietly left at 18; past ONNX's newest it quietly writes 18 too."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise ConfigError(
            f"--opset {opset}: expected {MIN_OPSET} to {newest} (torch.onnx writes {MIN_OPSET} and later; "
            f"onnx {onnx.__version__} knows up to {newest})"
        )


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def output_names(model: TaskModule, count: int) -> list[str]:
    """The task's names for the network's ``count`` outputs (``inference_outputs``)."""
    names = list(model.inference_outputs)
    if len(names) != count:
        raise ValueError(
            f"{type(model).__name__}.inference_outputs names {len(names)} outputs ({', '.join(names)}), "
            f"its inference_network() gives {count}"
        )
    return names


def describe_export(
    model: TaskModule,
    datamodule: TaskDataModule,
    ckpt_path: str | Path,
    path: Path,
    fmt: str,
    opset: int | None,
    names: list[str],
    batch: torch.Tensor,
    outputs: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]],
) -> dict:
    """What the JSON beside the export holds: everything a user needs to feed it and read it.
    ``outputs``: the network's on the check's ``batch`` and on the traced example, whose free
    axes differ from the batch's: an output's axis that differs between them follows the
    input's size (a detector's locations), and is ``free`` too."""
    meanings = model.inference_outputs
    free = model.inference_dynamic_shapes(torch.export.Dim("batch"))
    task = task_of(type(model))
    shapes = [["batch", *(a if a == b else "free" for a, b in zip(out.shape[1:], other.shape[1:], strict=True))]
              for out, other in zip(*outputs, strict=True)]  # fmt: skip
    return {
        "file": path.name,
        "format": fmt,
        **({"opset": opset} if fmt == "onnx" else {}),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "task": task.name if task is not None else class_path(model),
        "model": class_path(model),
        "input": {
            "name": "input",
            "shape": ["batch", *("free" if axis in free else size for axis, size in enumerate(batch.shape) if axis)],
            "dtype": "float32",
            **datamodule.describe_channels(),
        },
        "preprocessing": {**datamodule.describe_preprocessing(), "batch": model.describe_batch_inputs()},
        #: the publisher's record of the weights the backbone started from (the network inside
        #: maps the preprocessing's normalisation onto theirs itself)
        "backbone_weights": model.hparams.get("backbone_weights_meta"),
        "class_names": list(model.class_names),
        **model.describe_labels(),
        "outputs": [
            {"name": name, "shape": shape, "dtype": str(out.dtype).removeprefix("torch."), "meaning": meanings[name]}
            for name, shape, out in zip(names, shapes, outputs[0], strict=True)
        ],
    }


def summary_line(path: Path, info: dict) -> str:
    diffs = info["check"]["max_abs_diff"]
    return (
        f"exported {path} ({path.stat().st_size / 1e6:.2f} MB, {info['format']}"
        + (f", opset {info['opset']}" if "opset" in info else "")
        + f") in {info['export_seconds']:.1f} s; max abs diff vs PyTorch "
        + ", ".join(f"{n} {d:.2g}" for n, d in diffs.items())
        + f" on {info['check']['inputs']}"
    )
