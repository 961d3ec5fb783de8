"""A newcomer follows README.md literally: for every row of its "Bring your own data" table,
make a tiny folder in the layout the row shows, its label file starting with the row's own
example lines, run the row's command as typed (``DIR`` replaced, a few options from the
README's options table appended to keep the run short) and find what "What a run writes"
promises; then its ``make predict``, ``evaluate``, ``export`` and ``inspect`` lines once. And
each error line the "Troubleshooting" table quotes is what the suite prints for the mistake
it describes (fast: tiny data, at most one batch of training).

Each command runs as a real ``make`` from the repository root where ``make setup`` is up to
date (CI runs it first); elsewhere ``setup`` would create a new ``.venv``, so the recipe make
would run (``make -n``) runs instead, with this interpreter's ``cnnsuite``."""

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, make_image_folder, task_config
from conftest import fit as fit_here
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from test_multispectral3d import make_folder as make_eurosat_folder
from test_video3d import write_bars_video

from cnnsuite.cli import main

README = (ROOT / "README.md").read_text()

#: appended to each row's ARGS: a short run, one process, everything written under the test's folder
SHORT_RUN = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--data.batch_size", "4",
             "--data.num_workers", "0"]  # fmt: skip


def section(title: str) -> str:
    """The README's text under ``## title``, up to the next heading of that level."""
    return re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M).group(1)


def table(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in ``text`` (header and rule left out), each a list
    of cells with their inline-code backticks removed; ``\\|`` inside a cell is a ``|``."""
    lines = re.search(r"^\|.*?(?=^[^|]|\Z)", text, re.S | re.M).group(0).splitlines()
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return [[c.replace("`", "") for c in row] for row in cells[2:]]


def bring_your_own_data() -> dict[str, tuple[list[str], str]]:
    """The "Bring your own data" table: ``{task and layout: (label-file lines, command)}``; a
    command of "the same" is the row above's."""
    rows, command = {}, None
    for task, _layout, label_lines, row_command in table(section("Bring your own data")):
        command = command if row_command == "the same" else row_command
        lines = [] if label_lines.startswith("none") else label_lines.split("<br>")
        rows[task] = (lines, command)
    return rows


# --- the example data each row shows --------------------------------------------------------


def label_file(folder: Path, name: str, lines: list[str], count: int) -> list[list[str]]:
    """Write ``folder/name``: the README's example lines, then more rows like them (their label
    cells in turn, the file names' stems replaced: ``img/001.png`` -> ``img/extra3.png``) up to
    ``count`` rows. Returns the rows without the header."""
    header, *examples = list(csv.reader(lines))
    rows = [*examples]
    while len(rows) < count:
        like = examples[len(rows) % len(examples)]
        parent, _, stem = like[0].rstrip("/").rpartition("/")
        suffix = stem[stem.index(".") :] if "." in stem else ""
        rows.append([f"{parent}/" * bool(parent) + f"extra{len(rows)}{suffix}" + "/" * like[0].endswith("/"),
                     *like[1:]])  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    (folder / name).write_text(out.getvalue())
    return rows


def noise_image(path: Path, size=(48, 48), box=None, seed=0) -> None:
    """A noise picture (PNG or JPEG by its name) with a bright rectangle ``box`` = x1, y1, x2, y2."""
    image = np.random.default_rng(seed).integers(0, 60, size=(*size, 3), dtype=np.uint8)
    if box is not None:
        x1, y1, x2, y2 = box
        image[y1:y2, x1:x2] = 220
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_dicom_series(folder: Path, volume: np.ndarray, spacing=(1.0, 1.0, 1.5)) -> None:
    """One CT series, a file a slice (``000.dcm`` ...), as a scanner's export holds it."""
    folder.mkdir(parents=True)
    series = generate_uid()
    for k, plane in enumerate(volume.astype(np.int16)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = ds.SeriesInstanceUID = series
        ds.Modality, ds.InstanceNumber = "CT", k + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, k * spacing[2]], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = list(spacing[:2]), spacing[2]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)


def class_folders(folder: Path, lines: list[str]) -> None:
    make_image_folder(folder)


def multilabel_images(folder: Path, lines: list[str]) -> None:
    for i, (image, _) in enumerate(label_file(folder, "labels.csv", lines, count=24)):
        noise_image(folder / image, seed=i)


def boxes_csv(folder: Path, lines: list[str]) -> None:
    for i, (image, _, *box) in enumerate(label_file(folder, "labels.csv", lines, count=24)):
        noise_image(folder / image, size=(64, 64), box=[int(v) for v in box], seed=i)


def coco(folder: Path, lines: list[str]) -> None:
    """The README's COCO document, then more images, each with the first image's annotations."""
    doc = json.loads("".join(lines))
    folder.mkdir(parents=True)
    first = doc["images"][0]
    examples = [a for a in doc["annotations"] if a["image_id"] == first["id"]]
    for i in range(len(doc["images"]), 24):
        doc["images"].append({**first, "id": 1000 + i, "file_name": f"extra{i}{Path(first['file_name']).suffix}"})
        doc["annotations"] += [{**a, "id": 1000 * i + k, "image_id": 1000 + i} for k, a in enumerate(examples)]
    by_image = {image["id"]: image["file_name"] for image in doc["images"]}
    for i, annotation in enumerate(doc["annotations"]):
        x, y, w, h = annotation["bbox"]
        noise_image(folder / by_image[annotation["image_id"]], size=(64, 64), box=(x, y, x + w, y + h), seed=i)
    (folder / "annotations.json").write_text(json.dumps(doc))


def volumes(folder: Path, lines: list[str]) -> None:
    """NIfTI files and DICOM series folders as the README's rows name them; the second label's
    volumes hold a bright blob."""
    rng = np.random.default_rng(0)
    rows = label_file(folder, "labels.csv", lines, count=20)
    for image, label in rows:
        volume = rng.normal(size=(18, 16, 14)) * 100
        if label == rows[1][1]:
            volume[6:12, 5:11, 5:9] += 400
        if image.endswith("/"):
            write_dicom_series(folder / image, volume)
        else:
            (folder / image).parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(volume.astype(np.int16), np.diag([1.0, 1.0, 1.5, 1.0])), folder / image)


def videos(folder: Path, lines: list[str]) -> None:
    """2-second videos, one moving bar an action (each action its own speed)."""
    rows = label_file(folder, "labels.csv", lines, count=18)
    actions = sorted({action for _, cell in rows for action in cell.split(";")})
    for video, cell in rows:
        (folder / video).parent.mkdir(parents=True, exist_ok=True)
        write_bars_video(folder / video, [actions.index(a) + 1 for a in cell.split(";")])


def eurosat(folder: Path, lines: list[str]) -> None:
    make_eurosat_folder(folder, per_class=8)


#: a maker of the example data for each row of the table
EXAMPLES = {
    "recognition2d": class_folders,
    "recognition2d, several labels an image": multilabel_images,
    "localization2d": boxes_csv,
    "detection2d": coco,
    "biomedical3d": volumes,
    "video3d": videos,
    "multispectral3d": eurosat,
}


# --- running what the README says -------------------------------------------------------------


def make(command: str, **variables: str) -> subprocess.CompletedProcess:
    """``command`` (a README line, ``make <target> VAR=value ...``) with ``variables`` added,
    run from the repository root as a user types it; see the module's docstring for when make's
    own recipe runs instead of make."""
    argv = shlex.split(command)[1:] + [f"{k}={v}" for k, v in variables.items()]
    if subprocess.run(["make", "-q", "setup"], cwd=ROOT).returncode == 0:
        run = ["make", "--no-print-directory", *argv]  # under make test-slow, make would say where it is
    else:
        dry = subprocess.run(["make", "--no-print-directory", "-n", *argv], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
        (recipe,) = [line for line in dry.splitlines() if re.match(r"\S*/cnnsuite ", line)]
        run = ["bash", "-c", f"{Path(sys.executable).with_name('cnnsuite')} {recipe.partition(' ')[2]}"]
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def train(command: str, data: Path, runs: Path) -> Path:
    """The row's command with ``DIR`` replaced by ``data`` and a short run appended to its
    ARGS; returns the run folder, checked against "What a run writes"."""
    make_args = shlex.split(command)
    (args,) = [a for a in make_args if a.startswith("ARGS=")]
    extra = [*SHORT_RUN, "--trainer.default_root_dir", str(runs)]
    args = args.removeprefix("ARGS=").replace("DIR", shlex.quote(str(data))) + " " + shlex.join(extra)
    done = make(shlex.join([a for a in make_args if a.startswith(("make", "train", "TASK="))]), ARGS=args)

    run, written = runs / "version_0", section("What a run writes")
    for path in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv", "splits.json",
                 "evaluation/metrics.json", "evaluation/report.md"):  # fmt: skip
        assert Path(path).name in written and (run / path).is_file(), path
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard events"
    assert list((run / "evaluation").glob("*.png")), "plots"
    # "A fit ends with one line: the best checkpoint, ... and where the evaluation went."
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"result: {run / 'checkpoints' / 'best.ckpt'}") and str(run / "evaluation") in last, last
    return run


def test_the_options_appended_are_the_readmes():
    """The short run uses only options the README tells users about."""
    for option in [*SHORT_RUN[::2], "--trainer.default_root_dir"]:
        assert f"`{option} " in README, option


def test_every_row_of_the_table_has_its_example_data():
    assert set(bring_your_own_data()) == set(EXAMPLES)


def readme_make_lines() -> dict[str, str]:
    """``{target: line}`` of the ``make`` lines shown under "What a run writes", comments removed."""
    block = re.search(r"```\n(make .*?)```", section("What a run writes"), re.S).group(1)
    lines = [line.partition("#")[0].strip() for line in block.splitlines()]
    return {line.split()[1]: line for line in lines}


def fill(line: str, **values: object) -> str:
    """A README ``make`` line with its ``NAME=...`` values replaced by ``values``; an optional
    ``[NAME=...]`` is kept only where ``values`` names it."""
    words = []
    for word in shlex.split(line):
        name, _, _ = word.strip("[]").partition("=")
        if word.startswith("[") and name not in values:
            continue
        words.append(f"{name}={values[name]}" if name in values else word)
    return shlex.join(words)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(row)``: ``(data folder, run folder)`` of that row's run, made once."""
    done = {}

    def train_row(row: str) -> tuple[Path, Path]:
        if row not in done:
            tmp = tmp_path_factory.mktemp("newcomer")
            lines, command = bring_your_own_data()[row]
            EXAMPLES[row](tmp / "DIR", lines)
            done[row] = tmp / "DIR", train(command, tmp / "DIR", tmp / "runs")
        return done[row]

    return train_row


@pytest.mark.slow
@pytest.mark.parametrize("row", EXAMPLES)
def test_a_newcomer_trains_on_the_readmes_example_data(row, trained):
    trained(row)


@pytest.mark.slow
def test_a_newcomer_predicts_evaluates_exports_and_inspects_from_the_checkpoint(trained, tmp_path):
    """The lines under "What a run writes", on the recognition2d run; the run was on the
    user's folder, so evaluate and inspect are given it again (``DATA=``), as the Gotchas say."""
    data, run = trained("recognition2d")
    ckpt = run / "checkpoints" / "best.ckpt"
    lines = readme_make_lines()

    photos = make_image_folder(tmp_path / "photos", per_class=1)
    make(fill(lines["predict"], CKPT=ckpt, INPUT=photos))
    predicted = run / "predictions" / "photos"
    assert len((predicted / "predictions.jsonl").read_text().splitlines()) == 3
    assert len(list((predicted / "pictures").glob("*.png"))) == 3

    (run / "evaluation" / "metrics.json").unlink()
    make(fill(lines["evaluate"], CKPT=ckpt, DATA=data))
    assert "test/acc" in json.loads((run / "evaluation" / "metrics.json").read_text())

    make(fill(lines["export"], CKPT=ckpt))
    assert (run / "export" / "model.onnx").is_file() and (run / "export" / "model.onnx.json").is_file()

    make(fill(lines["inspect"], CKPT=ckpt, DATA=data))
    assert list((run / "inspection").rglob("*.png"))


# --- troubleshooting: each line the README quotes is what the suite prints -------------------


def troubleshooting() -> list[str]:
    """The lines the Troubleshooting table quotes, as quoted (``...`` marks what varies)."""
    cells = [re.split(r"(?<!\\)\|", line)[1].strip() for line in section("Troubleshooting").splitlines()
             if line.startswith("| `")]  # fmt: skip
    return [re.match(r"`` (.*?) ``" if cell.startswith("`` ") else r"`([^`]*)`", cell).group(1) for cell in cells]


def printed_by(argv: list[str], capsys) -> str:
    """The ``cnnsuite`` command's error, without its ``cnnsuite <command>: error:`` prefix;
    the command must end with it and exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    prefix = f"cnnsuite {argv[0]}: error: "
    return err[err.rindex(prefix) + len(prefix) :].rstrip("\n")


def quoted(line: str, **placeholders: str) -> re.Pattern:
    """A README line as a pattern: its placeholders (``DIR``, an example path, a count) stand
    for the values given, ``...`` and ``[...]`` for anything."""
    pattern = re.escape(line)
    for placeholder, value in placeholders.items():
        pattern = pattern.replace(re.escape(placeholder), re.escape(value))
    return re.compile(pattern.replace(r"\[\.\.\.\]", ".*").replace(r"\.\.\.", ".*"), re.S)


def fit_args(tmp_path: Path, *extra: str, task: str = "recognition2d") -> list[str]:
    return ["fit", "--config", task_config(task), "--data.data_root", str(tmp_path / "data"),
            "--trainer.default_root_dir", str(tmp_path / "runs"), *extra]  # fmt: skip


SMALL_NET = ["--model.backbone_kwargs", '{"channels": [4, 8], "blocks_per_stage": 1}', "--trainer.max_epochs", "1",
             "--trainer.limit_train_batches", "1", "--trainer.log_every_n_steps", "1"]  # fmt: skip


def no_such_folder(tmp_path):
    return fit_args(tmp_path, "--data.data_dir", str(tmp_path / "scans")), {"/home/me/scans": str(tmp_path / "scans")}


def mistyped_key(tmp_path):
    return fit_args(tmp_path, "--trainer.max_epocs", "1"), {}


def no_task(tmp_path):
    return ["fit"], {}


def empty_class_folder(tmp_path):
    folder = make_image_folder(tmp_path / "DIR")
    for image in (folder / "cat").iterdir():
        image.unlink()
    return fit_args(tmp_path, "--data.data_dir", str(folder)), {"DIR": str(folder)}


def damaged_image(tmp_path):
    folder = make_image_folder(tmp_path / "DIR")
    (folder / "dog" / "3.jpg").write_bytes(b"not a picture")
    return fit_args(tmp_path, "--data.data_dir", str(folder)), {"179": "24"}


def no_label_file(tmp_path):
    folder = tmp_path / "DIR"
    folder.mkdir()
    return fit_args(tmp_path, "--data.data_dir", str(folder), task="biomedical3d"), {"DIR": str(folder)}


def inputs_too_small(tmp_path):
    return fit_args(tmp_path, "--data.image_size", "8"), {}


def weights_not_downloaded(tmp_path):
    folder = make_image_folder(tmp_path / "DIR")
    return fit_args(tmp_path, "--data.data_dir", str(folder), "--model.backbone", "torchvision_resnet18",
                    "--model.backbone_kwargs", "{}",
                    "--model.backbone_weights", "torchvision:ResNet18_Weights.IMAGENET1K_V1"), {}  # fmt: skip


def monitor_not_logged(tmp_path):
    folder = make_image_folder(tmp_path / "DIR")
    return fit_args(tmp_path, "--data.data_dir", str(folder), *SMALL_NET, "--evaluate", "false",
                    "--checkpoint.monitor", "val/map"), {}  # fmt: skip


def export_exists(tmp_path):
    folder = make_image_folder(tmp_path / "DIR")
    run = fit_here("recognition2d", tmp_path, "--data.data_dir", str(folder), *SMALL_NET, "--evaluate", "false")
    for name in ("model.onnx", "model.onnx.json"):
        (tmp_path / name).write_text("a user's file")
    return ["export", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--out", "model.onnx"], {}


def out_holds_users_files(tmp_path):
    folder = make_image_folder(tmp_path / "DIR")
    run = fit_here("recognition2d", tmp_path, "--data.data_dir", str(folder), *SMALL_NET, "--evaluate", "false")
    (tmp_path / "mydir").mkdir()
    (tmp_path / "mydir" / "predictions.jsonl").write_text("a user's file")
    return ["predict", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(folder / "cat"),
            "--out", "mydir"], {}  # fmt: skip


def run_inside_data_folder(tmp_path):
    folder = make_image_folder(tmp_path / "photos")
    os.chdir(folder)  # undone with the test's own chdir
    return ["fit", "--config", task_config("recognition2d"), "--data.data_dir", "."], {"/home/me/photos": str(folder)}


#: the mistake each quoted line describes, by the line's first words: ``mistake(tmp_path)`` ->
#: ``(cnnsuite arguments, {placeholder in the README's line: its value here})``
MISTAKES = {
    "data.data_dir=": no_such_folder,
    "unknown key": mistyped_key,
    "no task chosen": no_task,
    "DIR/cat: class folder": empty_class_folder,
    "1 of 179 images": damaged_image,
    "DIR/labels.csv: missing": no_label_file,
    "the data's samples": inputs_too_small,
    "model.backbone_weights": weights_not_downloaded,
    "checkpoint.monitor": monitor_not_logged,
    "--out model.onnx": export_exists,
    "--out mydir": out_holds_users_files,
    "--trainer.default_root_dir": run_inside_data_folder,
}


def test_every_troubleshooting_line_has_its_mistake():
    lines = troubleshooting()
    assert len(lines) == len(MISTAKES)
    assert all(any(line.startswith(start) for line in lines) for start in MISTAKES)


@pytest.mark.parametrize("start", MISTAKES)
def test_the_troubleshooting_line_is_what_the_mistake_prints(start, tmp_path, monkeypatch, capsys):
    (line,) = [line for line in troubleshooting() if line.startswith(start)]
    monkeypatch.chdir(tmp_path)  # each mistake is made in an empty folder, with an empty torch cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    argv, placeholders = MISTAKES[start](tmp_path)
    printed = printed_by(argv, capsys).splitlines()[0]
    assert quoted(line, **placeholders).fullmatch(printed), f"README: {line}\nprinted: {printed}"


def test_make_passes_a_path_with_spaces_as_one_argument():
    """``make predict INPUT="mixed set/a.png"`` split the path at its space ("unrecognized
    arguments"): each path a target passes on is quoted."""
    made = subprocess.run(["make", "-n", "predict", "CKPT=my runs/best.ckpt", "INPUT=mixed set/a.png", "OUT=my out"],
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    (line,) = [line for line in made.stdout.splitlines() if "cnnsuite predict" in line]
    args = shlex.split(line)
    given = {flag: args[args.index(flag) + 1] for flag in ("--ckpt", "--input", "--out")}
    assert given == {"--ckpt": "my runs/best.ckpt", "--input": "mixed set/a.png", "--out": "my out"}


@pytest.mark.parametrize("value,forced", [("1", True), ("0", False), ("", False), ("no", False)])
def test_make_export_overwrites_only_with_force_1(value, forced):
    """``FORCE=0`` reads as "do not overwrite": only ``FORCE=1``, as ``make help`` says, passes
    ``--force`` (any value did, and replaced the user's file)."""
    command = ["make", "--no-print-directory", "-n", "export", "CKPT=a.ckpt", "OUT=b.onnx", f"FORCE={value}"]
    dry = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert ("--force" in dry.stdout) == forced
