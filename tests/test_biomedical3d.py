"""biomedical3d: MONAI reading of mixed NIfTI volumes, MedMNIST files, the CLI, errors."""

import csv
import gzip
import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from cnnsuite.tasks.biomedical3d.datamodule import Biomedical3DDataModule, class_names_of
from conftest import ROOT
from conftest import fit as run_fit

from cnnsuite.cli import main
from cnnsuite.data import BadFileError

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
    main(["evaluate", "--ckpt", str(ckpt), "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"test/acc", "test/auroc", "test/f1_macro", "test/acc/benign"} <= set(metrics)
    assert (tmp_path / "eval" / "slices.png").stat().st_size > 0
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_volumes_come_out_one_size_and_normalised(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    dm = Biomedical3DDataModule(data_dir=str(folder), spatial_size=[12, 10, 8], spacing=[1.0, 1.0, 1.0], cache="none")
    dm.setup("fit")
    volume = dm.datasets["test"][0]["image"]
    assert volume.shape == (1, 12, 10, 8) and volume.dtype == torch.float32
    assert abs(float(volume.mean())) < 1e-3 and abs(float(volume.std()) - 1) < 0.05
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (1, 12, 10, 8) and labels.dtype == torch.int64


def test_medmnist_npz_uses_its_own_split(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for stage, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{stage}_images"] = rng.integers(0, 255, size=(n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{stage}_labels"] = (np.arange(n) % 3).reshape(n, 1)
    npz = tmp_path / "organmnist3d.npz"
    np.savez(npz, **arrays)
    dm = Biomedical3DDataModule(medmnist_npz=str(npz), spatial_size=[28, 28, 28])
    assert dm.class_names == ["0", "1", "2"]
    dm.setup("fit")
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 12, "val": 4, "test": 6}
    assert dm.datasets["val"][1]["label"] == 1
    fit(tmp_path, "--data.medmnist_npz", str(npz), "--trainer.fast_dev_run", "true")
    np.savez(tmp_path / "bad.npz", train_images=arrays["train_images"])
    with pytest.raises(ValueError, match="bad.npz: not a MedMNIST file, missing arrays train_labels"):
        Biomedical3DDataModule(medmnist_npz=str(tmp_path / "bad.npz"))


def test_default_fast_dev_run(tmp_path):
    fit(tmp_path, "--trainer.fast_dev_run", "true", "--data.default_size", "24")
    default = tmp_path / "data" / "biomedical3d"
    assert len(list(default.glob("volumes/*.nii.gz"))) == 24 and (default / "labels.csv").is_file()


def test_truncated_volume_is_named(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    bad = folder / "scans" / "s1.nii.gz"
    bad.write_bytes(gzip.compress(bad.read_bytes())[:200])
    with pytest.raises(BadFileError, match="s1.nii.gz: cannot read as a volume"):
        Biomedical3DDataModule(data_dir=str(folder)).setup("fit")


def test_4d_volume_is_named(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), folder / "scans" / "s2.nii")
    with pytest.raises(BadFileError, match=r"s2.nii: expected a 3D volume, found shape \(3, 8, 8, 8\)"):
        Biomedical3DDataModule(data_dir=str(folder)).setup("fit")  # the memory cache reads every file
    lazy = Biomedical3DDataModule(data_dir=str(folder), cache="none")
    lazy.setup("fit")
    with pytest.raises(BadFileError, match="s2.nii: expected a 3D volume"):
        for dataset in lazy.datasets.values():
            [dataset[i] for i in range(len(dataset))]


def test_label_rows_are_checked(tmp_path):
    folder = make_volume_folder(tmp_path / "user")
    write_labels(folder, [("scans/s0.nii", "benign"), ("scans/missing.nii.gz", "malignant")])
    with pytest.raises(FileNotFoundError, match=r"labels.csv, line 3: .*missing.nii.gz does not exist"):
        Biomedical3DDataModule(data_dir=str(folder))
    (folder / "labels.csv").write_text("file,class\nscans/s0.nii,benign\n")
    with pytest.raises(ValueError, match="expected columns image,label"):
        Biomedical3DDataModule(data_dir=str(folder))
    (folder / "labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="labels.csv: missing"):
        Biomedical3DDataModule(data_dir=str(folder))


def test_integer_labels_sort_as_numbers():
    assert class_names_of(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_names_of(["b", "a"]) == ["a", "b"]
