"""biomedical3d: MONAI reading of mixed NIfTI volumes, MedMNIST files, caches, the CLI, errors."""

import csv
import gzip
import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from cnnsuite.tasks.biomedical3d.datamodule import Biomedical3DDataModule
from conftest import ROOT
from conftest import fit as run_fit
from monai.transforms import Resized
from PIL import Image

from cnnsuite.cli import main
from cnnsuite.data import BadFileError
from cnnsuite.data.labels import class_names_of
from cnnsuite.errors import ConfigError

CONFIG = str(ROOT / "tasks" / "biomedical3d" / "config.yaml")
SMALL = ["--data.spatial_size", "[16, 16, 16]", "--model.init_args.backbone_kwargs", "{channels: [4, 8]}"]


def make_volume_folder(root, per_class=4, labels=("benign", "malignant")):
    """Volumes of different shapes, spacings, orientations, dtypes and formats (NIfTI, NRRD);
    class = bright blob."""
    rng = np.random.default_rng(0)
    (root / "scans").mkdir(parents=True)
    rows = []
    for index in range(per_class * len(labels)):
        label = index % len(labels)
        shape = tuple(rng.integers(14, 24, size=3))
        volume = rng.normal(size=shape)
        if label:
            volume[tuple(slice(n // 3, 2 * n // 3) for n in shape)] += 4
        spacing = rng.uniform(0.7, 1.5, size=3)
        affine = np.diag([*spacing, 1.0])
        if index % 3 == 0:
            affine[0, 0] *= -1  # another orientation
        dtype = np.int16 if index % 2 else np.float32
        if index == 4:  # NRRD, read by the same MONAI LoadImage
            name = "scans/s4.nrrd"
            header = {
                "space": "left-posterior-superior",
                "space directions": np.diag(spacing),
                "space origin": [0, 0, 0],
            }
            nrrd.write(str(root / name), (volume * 100).astype(dtype), header)
        else:
            name = f"scans/s{index}.nii{'.gz' if index % 2 else ''}"
            nib.save(nib.Nifti1Image((volume * 100).astype(dtype), affine), root / name)
        rows.append((name, labels[label]))
    write_labels(root, rows)
    return root


def write_labels(root, rows):
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), *rows])


def fit(tmp_path, *extra):
    return run_fit("biomedical3d", tmp_path, *SMALL, *extra)


def all_volumes(folder, **kwargs):
    """Every volume of ``folder``'s labels.csv in one dataset, without random augmentation."""
    dm = Biomedical3DDataModule(data_dir=str(folder), **kwargs)
    return dm.make_dataset([image for image, _ in dm.list_samples()], "test")


def first_volume(folder, datamodule=Biomedical3DDataModule, **kwargs):
    """``scans/s0.nii`` as a ``datamodule`` gives it, without random augmentation."""
    dm = datamodule(data_dir=str(folder), spatial_size=[16, 16, 16], **kwargs)
    return dm.make_dataset(["scans/s0.nii"], "test")[0]["image"]


def test_mixed_nifti_folder_trains_and_evaluates(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    run = fit(tmp_path, "--data.data_dir", str(folder), "--trainer.max_epochs", "2", "--data.batch_size", "4",
              "--data.cache", "disk", "--data.test_fraction", "0.25", "--data.val_fraction", "0.25")  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before, "the user's folder was written to"
    assert list((tmp_path / "data" / "cache" / "biomedical3d").glob("*/*.pt")), "disk cache under data_root"
    ckpt = run / "checkpoints" / "best.ckpt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["class_names"] == ["benign", "malignant"]
    main(["evaluate", "--ckpt", str(ckpt), "--data.data_dir", str(folder), "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"test/acc", "test/auroc", "test/f1_macro", "test/acc/benign"} <= set(metrics)
    tested = len(json.loads((run / "splits.json").read_text())["test"])
    assert tested < 6 and Image.open(tmp_path / "eval" / "slices.png").height == 230 * tested  # a row a volume
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()

    # A volume holding NaN is that file's error, not a prediction scored NaN.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(np.full((12, 12, 12), np.nan, np.float32), np.eye(4)), inputs / "nan.nii.gz")
    with pytest.raises(SystemExit):  # nothing predicted: one line, exit status 2
        main(["predict", "--ckpt", str(ckpt), "--input", str(inputs), "--out", str(tmp_path / "pred")])
    (line,) = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert "nan.nii.gz: 1728 of 1728 voxels are NaN or infinite" in line["error"] and "probabilities" not in line


def test_volumes_come_out_one_size_and_normalised(tmp_path):
    """A non-cubic size: quarter turns in the 12x12 plane, never in the 12x8 one (it would come
    out 8x12 and the batch could not be stacked)."""
    folder = make_volume_folder(tmp_path / "user")
    dm = Biomedical3DDataModule(data_dir=str(folder), spatial_size=[12, 12, 8], spacing=[1.0, 1.0, 1.0], cache="none")
    dm.setup("fit")
    volume = dm.datasets["test"][0]["image"]
    assert volume.shape == (1, 12, 12, 8) and volume.dtype == torch.float32
    assert abs(float(volume.mean())) < 1e-3 and abs(float(volume.std()) - 1) < 0.05
    torch.manual_seed(0)
    loader = dm.train_dataloader()
    for _epoch in range(4):
        for batch in loader:
            images, labels = dm.augment_batch(batch)
            assert images.shape[1:] == (1, 12, 12, 8) and labels.dtype == torch.int64


def test_disk_cache_reads_a_rewritten_volume_again(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    disk = {"cache": "disk", "cache_dir": str(tmp_path / "cache")}
    before = first_volume(folder, **disk)
    path, stat = folder / "scans" / "s0.nii", (folder / "scans" / "s0.nii").stat()
    old = nib.load(path)
    content = np.random.default_rng(1).normal(size=old.shape).astype(old.get_data_dtype())
    nib.save(nib.Nifti1Image(content, old.affine), path)
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns != stat.st_mtime_ns  # only the time tells
    after = first_volume(folder, **disk)
    assert torch.equal(after, first_volume(folder, cache="none")) and not torch.equal(after, before)


def test_the_disk_cache_is_never_written_into_the_data_folder(tmp_path, monkeypatch):
    """The default ``data_root`` is relative: from inside the data folder, the disk cache would
    land in it and be listed with the user's files. Refused before it is written."""
    folder = make_volume_folder(tmp_path / "user")
    monkeypatch.chdir(folder)
    before = sorted(folder.rglob("*"))
    for given, option in (({}, "data.data_root"), ({"cache_dir": "cache"}, "data.cache_dir")):
        with pytest.raises(ConfigError, match=rf"--{option} {folder}/.*: inside the data folder {folder}, which is"):
            first_volume(folder, cache="disk", **given)
    assert sorted(folder.rglob("*")) == before
    assert first_volume(folder, cache="disk", data_root=str(tmp_path / "data")).shape == (1, 16, 16, 16)


@pytest.mark.parametrize(("cache_limit_mb", "kept"), [(1, True), (0.1, False)])
def test_the_memory_cache_keeps_a_split_within_cache_limit_mb(tmp_path, caplog, cache_limit_mb, kept):
    """Eight volumes of 16³ float32 voxels take 0.125 MiB: kept in memory within a limit of 1 MiB;
    over 0.1 MiB read from their files at every access, with one line saying so."""
    folder = make_volume_folder(tmp_path / "user")
    with caplog.at_level("INFO"):
        dataset = all_volumes(folder, spatial_size=[16, 16, 16], cache_limit_mb=cache_limit_mb)
    said = [r.getMessage() for r in caplog.records if "over data.cache_limit_mb" in r.getMessage()]
    told = f"{folder}: 8 volumes: 0 MiB decoded, over data.cache_limit_mb=0.1; decoded again every epoch"
    assert [line.split(" (")[0] for line in said] == ([] if kept else [told])
    before = dataset[0]["image"]
    path = folder / "scans" / "s0.nii"
    old = nib.load(path)
    nib.save(nib.Nifti1Image(np.random.default_rng(1).normal(size=old.shape).astype(np.float32), old.affine), path)
    assert torch.equal(dataset[0]["image"], before) is kept


def test_disk_cache_is_keyed_on_the_preprocessing_arguments(tmp_path):
    class NearestResize(Biomedical3DDataModule):
        def preprocessing(self):
            steps = super().preprocessing()
            return [Resized("image", self.spatial_size, mode="nearest") if isinstance(t, Resized) else t for t in steps]

    folder = make_volume_folder(tmp_path / "user")
    disk = {"cache": "disk", "cache_dir": str(tmp_path / "cache")}
    trilinear = first_volume(folder, **disk)
    nearest = first_volume(folder, NearestResize, **disk)
    assert torch.equal(nearest, first_volume(folder, NearestResize, cache="none"))
    assert not torch.equal(nearest, trilinear)


def make_medmnist(path, sizes=(("train", 12), ("val", 4), ("test", 6))):
    """A MedMNIST-3D style ``.npz``: ``(N, 28, 28, 28)`` uint8 volumes and ``(N, 1)`` labels
    (0, 1, 2, 0, ...) per split; returns its arrays."""
    rng = np.random.default_rng(0)
    arrays = {}
    for stage, n in sizes:
        arrays[f"{stage}_images"] = rng.integers(0, 255, size=(n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{stage}_labels"] = (np.arange(n) % 3).reshape(n, 1)
    np.savez(path, **arrays)
    return arrays


def test_medmnist_npz_uses_its_own_split(tmp_path):
    npz = tmp_path / "organmnist3d.npz"
    arrays = make_medmnist(npz)
    dm = Biomedical3DDataModule(medmnist_npz=str(npz), spatial_size=[28, 28, 28])
    assert dm.class_names == ["0", "1", "2"]
    dm.setup("fit")
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 12, "val": 4, "test": 6}
    assert dm.datasets["val"][1]["label"] == 1
    fit(tmp_path, "--data.medmnist_npz", str(npz), "--trainer.fast_dev_run", "true")
    np.savez(tmp_path / "bad.npz", train_images=arrays["train_images"])
    with pytest.raises(ValueError, match="bad.npz: not a MedMNIST file, missing arrays train_labels"):
        Biomedical3DDataModule(medmnist_npz=str(tmp_path / "bad.npz"))


def test_slices_are_named_for_what_they_show(tmp_path):
    """Volumes read from files are turned to RAS, so the evaluation's slices across their axes
    are sagittal, coronal and axial; a MedMNIST file's arrays, and a folder prepared from one,
    have no recorded orientation: their slices are named by axis."""
    folder = make_volume_folder(tmp_path / "user")
    npz = tmp_path / "organmnist3d.npz"
    make_medmnist(npz, (("train", 6), ("val", 3), ("test", 3)))
    prepared = tmp_path / "prepared"
    main(["prepare", "--task", "biomedical3d", "--data.medmnist_npz", str(npz), "--out", str(prepared),
          "--data.data_root", str(tmp_path / "data")])  # fmt: skip
    assert Biomedical3DDataModule(data_dir=str(folder)).slice_views == ("sagittal", "coronal", "axial")
    assert Biomedical3DDataModule(medmnist_npz=str(npz)).slice_views == ("axis 0", "axis 1", "axis 2")
    from_medmnist = Biomedical3DDataModule(
        data_dir=str(prepared), data_root=str(tmp_path / "data"), spatial_size=[32, 32, 32]
    )
    assert from_medmnist.slice_views == ("axis 0", "axis 1", "axis 2")


def test_a_medmnist_run_is_evaluated_on_the_files_test_split(tmp_path):
    """The run's split is the file's own (``<split>/<index>``): the evaluation after fit and
    ``cnnsuite evaluate`` of its checkpoint score the file's 5 test volumes, not a labels.csv
    looked for beside the file."""
    npz = tmp_path / "organmnist3d.npz"
    make_medmnist(npz, (("train", 12), ("val", 4), ("test", 5)))
    run = fit(tmp_path, "--data.medmnist_npz", str(npz), "--trainer.max_epochs", "1", "--data.batch_size", "4")
    main(["evaluate", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--data.medmnist_npz", str(npz),
          "--out", str(tmp_path / "eval")])  # fmt: skip
    for folder in (run / "evaluation", tmp_path / "eval"):
        assert json.loads((folder / "evaluation.json").read_text()) == {"data": str(npz), "test_samples": 5}
        assert {"test/acc", "test/auroc", "test/acc/2"} <= set(json.loads((folder / "metrics.json").read_text()))


def test_a_bad_volume_of_any_split_is_named_before_training(tmp_path):
    """The test split is read after the last epoch: its volumes' headers and ends are read
    before the first, with the other splits', and every bad one is named in one error (without
    a cache nothing else reads a volume before training): headers that do not read, and a
    volume cut past its header, as an interrupted copy leaves it."""
    folder = make_volume_folder(tmp_path / "user")
    split_file = tmp_path / "split.json"
    names = {"train": ["s0.nii", "s1.nii.gz", "s2.nii", "s4.nrrd"], "val": ["s3.nii.gz", "s6.nii"],
             "test": ["s5.nii.gz", "s7.nii.gz"]}  # fmt: skip
    split_file.write_text(json.dumps({stage: [f"scans/{n}" for n in listed] for stage, listed in names.items()}))
    for name in ("s1.nii.gz", "s7.nii.gz"):  # one training volume, one test volume
        bad = folder / "scans" / name
        bad.write_bytes(gzip.compress(bad.read_bytes())[:200])
    cut = folder / "scans" / "s5.nii.gz"
    cut.write_bytes(cut.read_bytes()[:-100])
    assert nib.load(cut).header.get_data_shape(), "the cut volume's header still reads"
    # a validation volume of three channels: its header says so
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), folder / "scans" / "s6.nii")
    with pytest.raises(BadFileError, match="4 of 8 volumes cannot be used") as caught:
        fit(tmp_path, "--data.data_dir", str(folder), "--data.split_file", str(split_file),
            "--trainer.max_epochs", "1", "--data.batch_size", "4", "--data.cache", "none")  # fmt: skip
    named = ("s1.nii.gz", "s5.nii.gz", "s7.nii.gz")
    assert all(f"{name}: cannot read as a volume" in str(caught.value) for name in named)
    assert "s6.nii: expected a 3D volume, its header declares 8x8x8x3" in str(caught.value)
    assert not (tmp_path / "runs" / "version_0" / "checkpoints").exists(), "trained before naming the test volume"


def test_default_fast_dev_run(tmp_path):
    fit(tmp_path, "--trainer.fast_dev_run", "true", "--data.default_size", "24")
    default = tmp_path / "data" / "biomedical3d-default_size=24"  # not the 900-volume default's folder
    assert len(list(default.glob("volumes/*.nii.gz"))) == 24 and (default / "labels.csv").is_file()
    assert json.loads((default / "generation.json").read_text()) == {"default_size": 24}


def test_a_checkpoint_does_not_choose_what_embedded_default_is_generated(tmp_path, capsys, monkeypatch):
    """Evaluating a run of the embedded default generates it again where it is missing, as the
    run made it: a checkpoint edited to ask for 10 million volumes would have had this machine
    write them. Settings other than the task's own default are used only where that data was
    generated already; elsewhere the command stops in one line and writes nothing."""
    from cnnsuite.cli import main

    run = fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
              "--trainer.limit_val_batches", "1", "--data.default_size", "24", "--evaluate", "false")  # fmt: skip
    ckpt = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["default_size"] = 10**7
    torch.save(checkpoint, tmp_path / "huge.ckpt")
    cases = [(ckpt, tmp_path / "elsewhere", "--data.default_size 24"),
             (tmp_path / "huge.ckpt", tmp_path / "data", "--data.default_size 10000000")]  # fmt: skip
    for source, data_root, settings in cases:
        with pytest.raises(SystemExit):
            main(
                ["evaluate", "--ckpt", str(source), "--data.data_root", str(data_root), "--out", str(tmp_path / "out")]
            )
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"generated with {settings}, which is not under {data_root}" in err

    # nor does a resumed run, which takes the run's other data settings: it reads the command's default,
    # generated above (writing the file's would take hours: it stops at once instead)
    def write_default(self, folder):
        raise AssertionError(f"the resumed run generated {self.generation_args} into {folder}")

    monkeypatch.setattr(Biomedical3DDataModule, "write_default", write_default)
    main(["fit", "--config", "tasks/biomedical3d/config.yaml", "--ckpt_path", str(tmp_path / "huge.ckpt"),
          "--data.data_root", str(tmp_path / "data"), "--trainer.default_root_dir", str(tmp_path / "resumed"),
          "--data.default_size", "24", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1",
          "--trainer.limit_val_batches", "1", "--evaluate", "false"])  # fmt: skip
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["biomedical3d-default_size=24"]


@pytest.mark.parametrize(
    ("names", "cut", "found"),
    [
        (("s1.nii.gz", "s3.nii.gz"), 200, "2 of 8 test volumes"),  # headers unreadable: the check finds them
        (("s0.nii", "s2.nii"), 400, "2 of 8 test volumes"),  # headers whole: the files' lengths tell
    ],
)
def test_truncated_volumes_are_named_together(tmp_path, names, cut, found):
    folder = make_volume_folder(tmp_path / "user")
    for name in names:
        bad = folder / "scans" / name
        bad.write_bytes(bad.read_bytes()[:cut])
    with pytest.raises(BadFileError, match=found) as caught:
        all_volumes(folder)
    assert all(f"{name}: cannot read as a volume" in str(caught.value) for name in names)


def test_only_volumes_that_may_be_cut_are_read_whole_to_check(tmp_path):
    """A whole NIfTI file, plain or gzipped, is measured by its length or gzip trailer and not
    read; one whose trailer says another length yet inflates whole (its header and voxels in
    two gzip members) is read by the check and kept, not refused."""
    from cnnsuite.tasks.biomedical3d.readers import check_header

    folder = make_volume_folder(tmp_path / "user")
    assert check_header(folder / "scans" / "s0.nii") and check_header(folder / "scans" / "s1.nii.gz")
    two = folder / "scans" / "s3.nii.gz"
    raw = gzip.decompress(two.read_bytes())
    two.write_bytes(gzip.compress(raw[:352]) + gzip.compress(raw[352:]))
    assert not check_header(two)
    dm = Biomedical3DDataModule(data_dir=str(folder))
    ids = [image for image, _ in dm.list_samples()]
    assert dm.find_bad(ids, decode=False) == {} and len(dm.check_samples(ids, "test")) == 8


def test_checking_a_folder_reads_each_header_once(tmp_path, monkeypatch):
    """The header check and the cut-file check share one read of each NIfTI header."""
    from cnnsuite.tasks.biomedical3d import readers

    folder = make_volume_folder(tmp_path / "user")
    dm = Biomedical3DDataModule(data_dir=str(folder))
    ids = [image for image, _ in dm.list_samples()]
    loads = []
    monkeypatch.setattr(
        readers.nib, "load", lambda path, *a, **k: loads.append(path) or nib.loadsave.load(path, *a, **k)
    )
    assert dm.find_bad(ids, decode=False) == {}
    nifti = sorted(str(folder / i) for i in ids if i.endswith((".nii", ".nii.gz")))
    assert len(nifti) > 2 and sorted(map(str, loads)) == nifti


def test_volume_with_nan_or_inf_is_named_before_training(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    volume = np.ones((12, 12, 12), np.float32)
    volume[3, 4, 5], volume[6, 7, 8] = np.nan, np.inf
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "scans" / "s2.nii")
    with pytest.raises(BadFileError, match=r"1 of \d+ volumes cannot be used") as caught:
        fit(tmp_path, "--data.data_dir", str(folder), "--trainer.fast_dev_run", "true", "--data.batch_size", "4")
    assert "s2.nii: 2 of 1728 voxels are NaN or infinite; expected finite values" in str(caught.value)


def test_an_empty_series_folder_is_named(tmp_path):
    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed

    (tmp_path / "series").mkdir()
    with pytest.raises(BadFileError, match=r"series: a folder without files; expected a DICOM series"):
        LoadVolumed()({"image": str(tmp_path / "series")})


def test_a_folder_of_two_dicom_series_is_named_not_read_as_one(tmp_path):
    """MONAI's DICOM reader stacks every file of a folder: a scan of 6 slices beside a
    localiser of 3 read as one volume of 9, their slices interleaved, and trained on silently."""
    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed
    from test_newcomer import write_dicom_series

    write_dicom_series(tmp_path / "series", np.zeros((6, 8, 8)))
    write_dicom_series(tmp_path / "localiser", np.zeros((3, 8, 8)), spacing=(1.0, 1.0, 5.0))
    for k, file in enumerate(sorted((tmp_path / "localiser").iterdir())):
        file.rename(tmp_path / "series" / f"loc{k}.dcm")
    for extra in ("none", "Thumbs.db"):  # a file that is no DICOM: MONAI's reader leaves it out, so does the check
        if extra != "none":
            (tmp_path / "series" / extra).write_bytes(bytes(512))
        with pytest.raises(BadFileError, match=r"series: holds 2 DICOM series \(SeriesInstanceUID [\d.]+: 6 files, "
                                               r"[\d.]+: 3 files\); expected one series a folder"):  # fmt: skip
            LoadVolumed()({"image": str(tmp_path / "series")})


def test_a_dicom_series_with_a_slice_missing_is_named_not_read_stretched(tmp_path):
    """MONAI's DICOM reader stacks the slices it finds and spreads them evenly: a series of 8
    slices 1.5 mm apart with two lost in transfer read as 6 slices 2.1 mm apart, the anatomy
    past the gap moved, and trained on silently. Slices listed out of order still read."""
    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed
    from test_newcomer import write_dicom_series

    write_dicom_series(tmp_path / "series", np.zeros((8, 8, 8)))
    files = sorted((tmp_path / "series").iterdir())
    files[0].rename(tmp_path / "series" / "999.dcm")  # the first slice listed last
    assert LoadVolumed()({"image": str(tmp_path / "series")})["image"].shape == (1, 8, 8, 8)
    files[3].unlink()  # one slice lost: a gap of two spacings
    one_lost = r"series: 7 slices, 1.5 mm apart but 3 mm between 3 and 6 mm \(a slice missing"
    with pytest.raises(BadFileError, match=one_lost):
        LoadVolumed()({"image": str(tmp_path / "series")})
    files[4].unlink()
    expected = r"series: 6 slices, 1.5 mm apart but 4.5 mm between 3 and 7.5 mm \(a slice missing\?\); expected one"
    with pytest.raises(BadFileError, match=expected):
        LoadVolumed()({"image": str(tmp_path / "series")})


def test_a_dicom_series_whose_positions_are_rounded_reads(tmp_path):
    """Some exports round ImagePositionPatient to 0.1 mm: 0.625 mm slices then lie 0.6 or 0.7 mm
    apart, which the even-slices check refused as 'a slice missing?'. A gap within the positions'
    own rounding reads; a slice missing from such a series is still named."""
    import pydicom
    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed
    from test_newcomer import write_dicom_series

    write_dicom_series(tmp_path / "series", np.zeros((16, 8, 8)), spacing=(1.0, 1.0, 0.625))
    files = sorted((tmp_path / "series").iterdir())
    for k, file in enumerate(files):
        ds = pydicom.dcmread(file)
        ds.ImagePositionPatient = [0.0, 0.0, round(k * 0.625, 1)]
        ds.save_as(file)
    assert LoadVolumed()({"image": str(tmp_path / "series")})["image"].shape == (1, 8, 8, 16)
    for file in files[6:8]:
        file.unlink()
    with pytest.raises(BadFileError, match=r"series: 14 slices, 0.6 mm apart but 1.9 mm between 3.1 and 5 mm"):
        LoadVolumed()({"image": str(tmp_path / "series")})
    # whole-millimetre positions 1 mm apart: a gap of 3 is slices missing, not several acquisitions
    write_dicom_series(tmp_path / "whole", np.zeros((10, 8, 8)), spacing=(1.0, 1.0, 1.0))
    for k, file in enumerate(sorted((tmp_path / "whole").iterdir())):
        ds = pydicom.dcmread(file)
        ds.ImagePositionPatient = ["0", "0", str(k)]
        ds.save_as(file)
    for file in sorted((tmp_path / "whole").iterdir())[4:6]:
        file.unlink()
    with pytest.raises(
        BadFileError, match=r"whole: 8 slices, 1 mm apart but 3 mm between 3 and 6 mm \(a slice missing"
    ):
        LoadVolumed()({"image": str(tmp_path / "whole")})


def test_a_folder_of_no_dicom_file_is_named_as_one(tmp_path):
    """The files that are no DICOM are left out of a series: a folder of those alone read as
    'cannot read as a volume (IndexError: list index out of range)'."""
    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed

    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "notes").write_text("scanned 2024-05-01")
    (tmp_path / "scan" / "Thumbs.db").write_bytes(bytes(512))
    with pytest.raises(BadFileError, match=r"scan: holds no DICOM file \(Thumbs.db, notes\); expected a DICOM series"):
        LoadVolumed()({"image": str(tmp_path / "scan")})


@pytest.mark.parametrize("name", ["scan.nii.bz2", "scan.hdr.gz", "scan.img"])
def test_a_file_of_no_volume_ending_is_refused_before_nibabel_reads_it(tmp_path, monkeypatch, name):
    """nibabel reads ``.nii.bz2`` and Analyze ``.hdr`` pairs too, whose header extensions the
    check before it did not walk: an 845-byte ``.nii.bz2`` a labels.csv named took 3.1 GB."""
    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed

    (tmp_path / name).write_bytes(bytes(400))
    monkeypatch.setattr(nib, "load", lambda *args, **kwargs: pytest.fail("nibabel read it"))
    with pytest.raises(BadFileError, match=rf"{name}: expected a volume file \(.nii, .nii.gz, .nrrd"):
        LoadVolumed()({"image": str(tmp_path / name)})


def test_predict_takes_a_dicom_series_whose_files_have_no_ending(tmp_path):
    """Scanners export slices as ``IM0000``, ``IM0001``: training read such a folder, predict
    took only folders of ``.dcm`` files and said it expected NIfTI, NRRD or MetaImage."""
    from test_newcomer import write_dicom_series

    write_dicom_series(tmp_path / "patient", np.zeros((4, 8, 8)))
    for k, file in enumerate(sorted((tmp_path / "patient").iterdir())):
        file.rename(file.with_name(f"IM{k:04d}"))
    datamodule = Biomedical3DDataModule(data_dir=str(make_volume_folder(tmp_path / "user")))
    assert datamodule.is_input(tmp_path / "patient")
    assert datamodule.inputs_taken().endswith(".mhd, or a folder of DICOM files (one series)")


def test_predict_takes_a_dicom_series_beside_a_file_that_is_no_slice(tmp_path):
    """Training reads a series folder holding a ``notes.txt`` or ``Thumbs.db`` (MONAI's reader,
    and the header check, leave them out); predict took that folder for no input at all, so
    ``--input`` of it was 'no file this model takes' and a folder of patients lost that one in a
    count of 'files of other types'. A folder holding a volume file or a sub-folder is a folder
    of inputs, and one with no DICOM file is no series."""
    from test_newcomer import write_dicom_series

    write_dicom_series(tmp_path / "inputs" / "patient", np.zeros((4, 8, 8)))
    (tmp_path / "inputs" / "patient" / "notes.txt").write_text("not a slice")
    (tmp_path / "inputs" / "patient" / "Thumbs.db").write_bytes(bytes(512))
    datamodule = Biomedical3DDataModule(data_dir=str(make_volume_folder(tmp_path / "user")))
    assert datamodule.is_input(tmp_path / "inputs" / "patient")
    assert not datamodule.is_input(tmp_path / "inputs")  # a folder of series
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("not a slice")
    assert not datamodule.is_input(tmp_path / "notes")
    scans = tmp_path / "user" / "scans"
    write_dicom_series(scans / "series", np.zeros((4, 8, 8)))
    for file in (scans / "series").iterdir():
        file.rename(scans / file.name)  # slices beside NIfTI files: a folder of inputs, not a series
    assert not datamodule.is_input(scans)


def test_4d_volume_is_named(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), folder / "scans" / "s2.nii")
    for cache in ("memory", "none"):  # named by its header when the split is checked, decoded or not
        with pytest.raises(BadFileError, match=r"s2.nii: expected a 3D volume, its header declares 8x8x8x3"):
            all_volumes(folder, cache=cache)


def test_an_nrrd_in_the_formats_right_anterior_superior_space_reads_as_its_lps_twin(tmp_path):
    """The NRRD format names RAS ``right-anterior-superior``; MONAI knows it only as ``RAS``,
    and its Orientationd failed with a traceback. The same voxels in the same place, written in
    LPS and in RAS, give one volume. A space no volume is oriented from is one line."""
    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed
    from monai.transforms import Orientationd

    voxels = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    for name, space, directions in (("lps", "left-posterior-superior", np.diag([1.0, 2.0, 3.0])),
                                    ("ras", "right-anterior-superior", np.diag([-1.0, -2.0, 3.0]))):  # fmt: skip
        header = {"space": space, "space directions": directions, "space origin": np.zeros(3)}
        nrrd.write(str(tmp_path / f"{name}.nrrd"), voxels, header)
    load = [LoadVolumed("image"), Orientationd("image", axcodes="RAS")]
    lps, ras = ({"image": str(tmp_path / f"{name}.nrrd")} for name in ("lps", "ras"))
    for transform in load:
        lps, ras = transform(lps), transform(ras)
    assert torch.equal(lps["image"].as_tensor(), ras["image"].as_tensor())
    assert np.allclose(lps["image"].affine, ras["image"].affine)
    # without space directions or origin (optional in the format), placed as ITK's reader places it: by
    # its spacings (else 1 mm), the first voxel's centre half a voxel past its axis mins (else the origin)
    cases = [
        ({}, [1, 1, 1], [0, 0, 0]),
        ({"spacings": [2.0, 3.0, 4.0], "axis mins": [5.0, 6.0, 7.0]}, [2, 3, 4], [6, 7.5, 9]),  # cell-centred
        ({"axis mins": [5.0, 6.0, 7.0]}, [1, 1, 1], [0, 0, 0]),  # mins without spacings: ITK's origin too
        ({"space": "left-posterior-superior", "space directions": np.diag([1.0, 2.0, 3.0])}, [1, 2, 3], [0, 0, 0]),
    ]
    for header, spacing, origin in cases:
        nrrd.write(str(tmp_path / "plain.nrrd"), voxels, header)
        plain = LoadVolumed("image")({"image": str(tmp_path / "plain.nrrd")})["image"]
        assert torch.equal(plain.as_tensor()[0], torch.from_numpy(voxels))
        assert np.allclose(plain.pixdim, spacing) and np.allclose(abs(plain.affine[:3, 3]), origin), header
    nrrd.write(str(tmp_path / "scanner.nrrd"), voxels, {"space": "scanner-xyz", "space directions": np.eye(3)})
    with pytest.raises(BadFileError, match=r"scanner.nrrd: its header says space: scanner-xyz; expected right-"):
        LoadVolumed("image")({"image": str(tmp_path / "scanner.nrrd")})


def test_a_detached_header_reads_only_a_data_file_beside_it(tmp_path, monkeypatch):
    """A detached NRRD header (a ``data file`` field) names the file of its voxels: one beside
    it is read; one elsewhere on the machine (absolute, or up through ``..``) is refused before
    the loader opens anything, naming the header."""
    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed

    volume = np.arange(6 * 6 * 6, dtype=np.float32).reshape(6, 6, 6)
    (tmp_path / "elsewhere").mkdir()
    volume.tofile(tmp_path / "elsewhere" / "secret.raw")
    scans = tmp_path / "scans"
    (scans / "raw").mkdir(parents=True)
    volume.tofile(scans / "raw" / "v.raw")

    def header(name: str, data_file: str) -> str:
        fields = ("type: float", "dimension: 3", "space: left-posterior-superior", "sizes: 6 6 6",
                  "space directions: (1,0,0) (0,1,0) (0,0,1)", "space origin: (0,0,0)", "endian: little",
                  "encoding: raw")  # fmt: skip
        (scans / name).write_text("\n".join(["NRRD0004", *fields, f"data file: {data_file}", "", ""]))
        return str(scans / name)

    for name in ("beside.nrrd", "beside.nhdr"):  # .nhdr: MONAI's own choice would be its DICOM reader
        read = LoadVolumed()({"image": header(name, "raw/v.raw")})["image"]
        assert read.shape == (1, 6, 6, 6) and float(read.sum()) == float(volume.sum())
    monkeypatch.chdir(scans)  # named from its own folder
    assert LoadVolumed()({"image": "beside.nrrd"})["image"].shape == (1, 6, 6, 6)
    for name, data_file in (
        ("up.nrrd", "../elsewhere/secret.raw"),
        ("abs.nrrd", str(tmp_path / "elsewhere" / "secret.raw")),
    ):
        with pytest.raises(BadFileError, match=rf"{name}: its header names the data file .*, outside its own folder"):
            LoadVolumed()({"image": header(name, data_file)})


@pytest.mark.parametrize("encoding", ["gzip", "bzip2"])
def test_an_nrrd_whose_compressed_voxels_inflate_past_its_sizes_is_refused_unread(tmp_path, encoding, monkeypatch):
    """pynrrd inflates compressed voxels whole before comparing them with the header: a few KB
    declaring 4x4x4 voxels took GBs of memory (an upload to cnnsuite serve, a volume of a user's
    folder). Such a file, attached or behind a detached header, is one line; an honest one reads."""
    import bz2
    import gzip

    from cnnsuite.tasks.biomedical3d import readers
    from cnnsuite.tasks.biomedical3d.readers import LoadVolumed

    compress = gzip.compress if encoding == "gzip" else bz2.compress
    bomb = compress(bytes(8 << 20))  # 8 MiB of zeros, for 64 voxels
    fields = ["NRRD0004", "type: uint8", "dimension: 3", "sizes: 4 4 4", f"encoding: {encoding}", "endian: little"]
    (tmp_path / "bomb.nrrd").write_bytes("\n".join([*fields, "", ""]).encode() + bomb)
    (tmp_path / "bomb.raw.gz").write_bytes(bomb)
    (tmp_path / "bomb.nhdr").write_text("\n".join([*fields, "data file: bomb.raw.gz", "", ""]))
    for name in ("bomb.nrrd", "bomb.nhdr"):
        with pytest.raises(BadFileError, match=rf"{name}: its {encoding} voxels inflate past 66,048 bytes"):
            LoadVolumed()({"image": str(tmp_path / name)})

    # the quick check of a user's folder reads headers only: inflating every volume there would
    # double the decompression of a folder of NRRDs
    data = Biomedical3DDataModule(data_dir=str(make_volume_folder(tmp_path / "user")), data_root=str(tmp_path / "d"))
    inflated = []
    monkeypatch.setattr(readers, "check_nrrd_payload", lambda path: inflated.append(path))
    assert data.find_bad([i for i, _ in data.samples()], decode=False) == {} and inflated == []
    monkeypatch.undo()

    volume = np.arange(64, dtype=np.uint8).reshape(4, 4, 4)
    space = {"space": "left-posterior-superior", "space directions": np.eye(3), "space origin": [0, 0, 0]}
    nrrd.write(str(tmp_path / "honest.nrrd"), volume, {"encoding": encoding, **space})
    assert np.array_equal(LoadVolumed()({"image": str(tmp_path / "honest.nrrd")})["image"][0].numpy(), volume)


def test_metaimage_without_itk_says_what_it_needs(tmp_path, monkeypatch):
    """MetaImage is ITK's format: without ITK a ``.mha`` is one line saying so, where MONAI's
    own choice of reader gave pydicom's complaint about a missing DICOM preamble."""
    from cnnsuite.tasks.biomedical3d import readers

    monkeypatch.setattr(readers, "has_itk", False)
    header = "ObjectType = Image\nNDims = 3\nDimSize = 6 6 6\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    (tmp_path / "v.mha").write_bytes(header.encode() + np.zeros(216, np.float32).tobytes())
    with pytest.raises(BadFileError, match=r"v\.mha: MetaImage is read with ITK, which is not installed"):
        readers.LoadVolumed()({"image": str(tmp_path / "v.mha")})


def test_label_rows_are_checked(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    write_labels(folder, [("scans/s0.nii", "benign"), ("scans/gone.nii", "malignant"), ("scans/lost.nrrd", "benign")])
    with pytest.raises(BadFileError, match="2 of 3 volumes") as caught:
        Biomedical3DDataModule(data_dir=str(folder))
    assert "labels.csv, line 3: " in str(caught.value) and "gone.nii does not exist" in str(caught.value)
    assert "labels.csv, line 4: " in str(caught.value) and "lost.nrrd does not exist" in str(caught.value)
    (folder / "labels.csv").write_text("file,class\nscans/s0.nii,benign\n")
    with pytest.raises(ValueError, match="expected columns image,label"):
        Biomedical3DDataModule(data_dir=str(folder))
    (folder / "labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="labels.csv: missing"):
        Biomedical3DDataModule(data_dir=str(folder))


def test_integer_labels_sort_as_numbers():
    assert class_names_of(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_names_of(["b", "a"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("spacing", [-1.0, 1.0, 1.0], r"data.spacing=\[-1.0, 1.0, 1.0\]: expected 3 voxel sizes in mm, each above 0"),
        ("spacing", [0.0, 1.0, 1.0], r"data.spacing=\[0.0, 1.0, 1.0\]: expected 3 voxel sizes"),
        ("spacing", [1.0, 1.0], r"data.spacing=\[1.0, 1.0\]: expected 3 voxel sizes"),
        ("spatial_size", [8, 8], r"data.spatial_size=\[8, 8\]: expected 3 sizes"),
    ],
)
def test_a_volume_setting_no_volume_has_is_named(tmp_path, option, value, message):
    """MONAI's Spacingd keeps an axis of spacing 0 or below as stored: the run trained as if
    unset while its export's JSON said it resampled to that spacing."""
    with pytest.raises(ConfigError, match=message):
        Biomedical3DDataModule(data_root=str(tmp_path), **{option: value})


def test_a_spacing_that_would_resample_a_volume_past_the_voxel_limit_is_its_error(tmp_path):
    """``data.spacing`` far finer than a volume's own (a setting, or a checkpoint's) had MONAI's
    Spacingd allocate gigabytes: 0.05 mm made a 32³ volume at 1 mm 7.6 GB."""
    folder = make_volume_folder(tmp_path / "user")
    dm = Biomedical3DDataModule(data_dir=str(folder), spacing=[0.001] * 3, cache="none")
    with pytest.raises(BadFileError, match=r"s0.nii: resampled from \[.*\] mm to data.spacing \[0.001, 0.001, 0.001\]"
                                           r" mm is .* voxels, over the limit"):  # fmt: skip
        dm.make_dataset(["scans/s0.nii"], "test")[0]
    coarser = Biomedical3DDataModule(data_dir=str(folder), spacing=[2.0] * 3, cache="none")
    assert coarser.make_dataset(["scans/s0.nii"], "test")[0]["image"].shape[1:] == coarser.spatial_size


def test_a_volume_named_without_its_ending_is_told_by_its_first_bytes(tmp_path):
    """serve names an upload without an ending the task takes (a browser's Blob is "blob") by
    its content: NIfTI-1 and -2 by their magic, gzipped or not, NRRD by its first line; each is
    read under the ending told. An image is no volume."""
    dm = Biomedical3DDataModule(spatial_size=[8, 8, 8])
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "a.nii")
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "b.nii.gz")
    nib.save(nib.Nifti2Image(volume, np.eye(4)), tmp_path / "c.nii")
    space = {"space": "left-posterior-superior", "space directions": np.eye(3), "space origin": [0, 0, 0]}
    nrrd.write(str(tmp_path / "d.nrrd"), volume, space)
    for name, expected in (("a.nii", ".nii"), ("b.nii.gz", ".nii.gz"), ("c.nii", ".nii"), ("d.nrrd", ".nrrd")):
        assert dm.content_suffix((tmp_path / name).read_bytes()) == expected, name
        blob = (tmp_path / name).rename(tmp_path / f"blob-{name.split('.')[0]}{expected}")
        assert dm.read_input(blob).sample.shape == (1, 8, 8, 8)
    assert dm.content_suffix(b"\x89PNG\r\n\x1a\n" + bytes(600)) is None
    assert dm.content_suffix(gzip.compress(b"not a volume" * 100)) is None


def test_the_export_words_for_normalisation_give_read_inputs_values_for_a_constant_volume(tmp_path):
    """Followed literally, "(x - its mean) / its std" makes a constant volume NaN, where the
    reader (MONAI's NormalizeIntensity) gives zeros; and which std (over N or N - 1) it is
    changes every value. The words say both, and followed so they give the reader's values."""
    datamodule = Biomedical3DDataModule(data_dir=str(make_volume_folder(tmp_path / "user")), spatial_size=[8, 8, 8])
    words = datamodule.describe_preprocessing()["normalisation"]
    assert "standard deviation over all voxels, dividing by their count" in words
    assert "a volume of one value becomes all zeros" in words
    rng = np.random.default_rng(0)
    for name, voxels in (("flat", np.full((8, 8, 8), 7.0)), ("random", rng.normal(3, 2, (8, 8, 8)))):
        nib.save(nib.Nifti1Image(voxels.astype(np.float32), np.eye(4)), tmp_path / f"{name}.nii")
        read = datamodule.read_input(tmp_path / f"{name}.nii").sample[0].numpy()
        std = voxels.std() or 1.0  # numpy's std divides by the count
        np.testing.assert_allclose(read, (voxels - voxels.mean()) / std, atol=1e-5)
