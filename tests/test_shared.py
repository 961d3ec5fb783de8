"""The shared package's promises: data plumbing, images as a viewer shows them, the CLI's
errors, the metrics' inputs, and the defaults every task inherits."""

import importlib
import os
import pkgutil
import warnings

import cnnsuite.tasks
import numpy as np
import pytest
import torch
from cnnsuite.tasks.biomedical3d.datamodule import Biomedical3DDataModule
from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule
from conftest import ROOT, make_image_folder
from PIL import Image
from torch import nn
from torchmetrics.classification import MulticlassAUROC
from torchvision.transforms import v2

import cnnsuite
from cnnsuite.backbone import build_backbone
from cnnsuite.backbone.registry import _BACKBONES, register_backbone
from cnnsuite.cli import CnnSuiteCLI, main
from cnnsuite.data import BadFileError, TaskDataModule, list_classes, list_samples, read_image
from cnnsuite.data.cache import MIB, DecodedCache, check_cache_limit
from cnnsuite.data.images import IMAGE_EXTENSIONS, image_size
from cnnsuite.data.prepare import prepare_once
from cnnsuite.data.splits import split_validation, stratified_split
from cnnsuite.errors import ConfigError
from cnnsuite.training.callbacks import PreciseBatchNorm
from cnnsuite.training.classification import ClassificationModule
from cnnsuite.use.tiles import mistakes_first, readable_scale

# --- images ---------------------------------------------------------------------------


def exif_rotated_jpeg(path, upright: np.ndarray, orientation: int = 6) -> None:
    """A JPEG (or the format ``path`` ends in) as a phone writes it: pixels stored turned, and
    the EXIF tag that says how to turn them back (6: rotate 90° clockwise to view)."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the sensor saw
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif, quality=95)


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".png", ".tif"])
def test_an_exif_rotated_photo_is_read_upright(tmp_path, suffix):
    """In colour and in gray: torchvision, which decodes a colour WebP, turned it by its tag
    only for JPEG and PNG, so a phone's WebP was read on its side in colour, upright in gray."""
    upright = np.zeros((40, 24, 3), np.uint8)  # tall, with its bright part at the top
    upright[:10] = 255
    photo = tmp_path / f"photo{suffix}"
    exif_rotated_jpeg(photo, upright)  # stored wide, viewed tall
    assert image_size(photo) == (24, 40)
    for channels in (1, 3):
        image = read_image(photo, channels)
        assert image.shape == (channels, 40, 24)
        assert image[:, :10].mean() > 0.8 and image[:, 10:].mean() < 0.2


def test_an_exif_rotated_photo_is_upright_in_training_and_evaluation(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=4)
    upright = np.zeros((40, 24, 3), np.uint8)
    upright[:10] = 255
    exif_rotated_jpeg(folder / "cat" / "phone.jpg", upright)
    dm = RecognitionDataModule(data_dir=str(folder), image_size=8, augment=False, channels=1)
    dm.setup("fit")
    stages = [stage for stage in ("train", "val", "test") if "cat/phone.jpg" in dm.datasets[stage].ids]
    assert len(stages) == 1, "the photo is a sample of the split, under its id"
    for stage in ("train", "val", "test"):  # whichever split it falls in, it reads upright
        dataset = dm.make_dataset(["cat/phone.jpg"], stage)
        assert len(dataset) == 1
        image, label = dataset[0]
        assert label == dm.class_names.index("cat") and image.shape == (1, 8, 8)
        assert image[0, :2].mean() > 0.5 and image[0, 3:].mean() < -0.5, stage


def test_unusual_image_files_are_read_and_stray_files_ignored(tmp_path):
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray((np.arange(120).reshape(12, 10) * 500).astype(np.uint16)).save(folder / "gray16.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb).save(folder / "plain.bmp")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    root = tmp_path / "images"
    samples = list_samples(root, list_classes(root, IMAGE_EXTENSIONS), IMAGE_EXTENSIONS)
    assert sorted(s for s, _ in samples) == ["a/cmyk.jpg", "a/gray16.png", "a/plain.bmp", "a/rgba.png"]
    for sample_id, _ in samples:
        for channels in (1, 3):
            image = v2.ToDtype(torch.float32, scale=True)(read_image(root / sample_id, channels))
            assert image.shape == (channels, 12, 10) and 0 <= image.min() < image.max() <= 1, sample_id
    gray16 = v2.ToDtype(torch.float32, scale=True)(read_image(root / "a/gray16.png", 1))
    assert gray16.max() == pytest.approx(59500 / 65535)  # 16 bits kept, scaled like 8


def test_every_bad_image_is_named_at_once_before_training(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=8)
    dm = RecognitionDataModule(data_dir=str(folder))
    dm.setup("test")
    bad = [*dm.splits["train"][1::5], dm.splits["test"][0]]  # a bad test file too, found before training
    for name in bad:
        (folder / name).write_bytes(b"not an image")
    with pytest.raises(BadFileError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert message.startswith(f"{len(bad)} of 24 images cannot be used:")
    assert len(bad) >= 4 and all(name in message for name in bad)
    with pytest.raises(BadFileError, match=rf"^1 of {len(dm.splits['test'])} test images cannot be used"):
        dm.datasets["test"]  # evaluation checks the split it reads


def test_data_seed_decides_the_split_and_a_checkpoints_split_is_checked_as_a_split_file_is(tmp_path):
    """``data.seed`` draws the split (one seed, one split; another seed, another), and a split taken
    from a checkpoint's state is held to the rules of any split: a sample in two splits is refused."""
    folder = make_image_folder(tmp_path / "images", per_class=6)

    def split(seed):
        dm = RecognitionDataModule(data_dir=str(folder), seed=seed)
        dm.setup("fit")
        return dm.splits

    assert split(1) == split(1) and split(1) != split(2)
    shares = RecognitionDataModule(data_dir=str(folder), val_fraction=0.1, test_fraction=0.4)
    shares.setup("fit")
    assert len(shares.splits["test"]) > 2 * len(shares.splits["val"])  # each fraction its own split's
    saved = split(1)
    leaked = {**saved, "test": saved["test"] + saved["train"][:1]}
    dm = RecognitionDataModule(data_dir=str(folder))
    with pytest.raises(ConfigError, match=r"the checkpoint's split: '.*' is in train and test; expected each sample"):
        dm.load_state_dict({"splits": leaked})
    stale = {**saved, "test": [*saved["test"], "cat/gone.png"]}  # another folder's split, or a file since removed
    with pytest.raises(ConfigError, match=r"the checkpoint's split: 1 test entries are not in .*cat/gone.png"):
        dm.load_state_dict({"splits": stale})
    dm.load_state_dict({"splits": saved})
    assert dm.splits == saved


def test_each_file_is_checked_once_and_a_split_unchecked_by_training_when_it_is_built(tmp_path, monkeypatch):
    """The check is one hook (``find_bad``); the datamodule asks it about each sample once."""
    folder = make_image_folder(tmp_path / "images", per_class=6)
    asked: list[str] = []
    find_bad = RecognitionDataModule.find_bad
    monkeypatch.setattr(
        RecognitionDataModule, "find_bad", lambda dm, ids, decode: asked.extend(ids) or find_bad(dm, ids, decode)
    )
    dm = RecognitionDataModule(data_dir=str(folder), image_size=8)
    dm.setup("fit")
    for stage in ("train", "val", "test"):
        dm.datasets[stage]
    assert sorted(asked) == sorted(i for ids in dm.splits.values() for i in ids)
    asked.clear()
    evaluating = RecognitionDataModule(data_dir=str(folder), image_size=8)
    evaluating.setup("test")
    assert asked == []
    evaluating.datasets["test"]
    assert asked == evaluating.splits["test"]


def test_an_option_several_tasks_declare_is_checked_for_any_task_that_declares_it():
    class OwnDataModule(TaskDataModule):
        default_name = "own"

        def __init__(self, on_bad_file: str = "error", cache_limit_mb: float = 1024, **kwargs) -> None:
            super().__init__(**kwargs)

    for key, value in (("on_bad_file", "ignore"), ("cache_limit_mb", -1)):
        with pytest.raises(ConfigError, match=f"data.{key}="):
            OwnDataModule(**{key: value})
    assert OwnDataModule(on_bad_file="skip").on_bad_file == "skip"


# --- the CLI --------------------------------------------------------------------------


def test_a_user_mistake_is_one_line_and_exit_status_2(tmp_path, capsys):
    args = ["fit", "--config", str(ROOT / "tasks/recognition2d/config.yaml"),
            "--data.data_dir", str(tmp_path / "missing"), "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.splitlines()[-1]
    assert exit_info.value.code == 2
    assert err == f"cnnsuite fit: error: data.data_dir={tmp_path / 'missing'}: no such folder"
    with pytest.raises(ValueError, match="no such folder"):  # --debug keeps the traceback
        main([*args, "--debug"])


@pytest.mark.parametrize("cache_limit_mb", ["0", "1024"])  # decoded in a loader worker / once, in the main process
def test_an_error_raised_in_a_loader_worker_is_shown_as_its_own_message(tmp_path, capsys, cache_limit_mb):
    folder = make_image_folder(tmp_path / "images", per_class=6)
    whole = (folder / "dog" / "0.png").read_bytes()
    (folder / "dog" / "0.png").write_bytes(whole[: len(whole) // 2])  # its header reads; its pixels do not
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "tasks/recognition2d/config.yaml"), "--data.data_dir", str(folder),
              "--data.num_workers", "1", "--data.cache_limit_mb", cache_limit_mb, "--trainer.fast_dev_run", "true",
              "--trainer.default_root_dir", str(tmp_path / "runs")])  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("cnnsuite fit: error: ") and "dog/0.png: cannot decode as an image" in last


def test_a_split_over_the_cache_limit_is_read_every_time_and_the_user_told_of_prepare(caplog):
    reads = []

    def read(i):
        reads.append(i)
        return i

    with caplog.at_level("INFO"):
        cache = DecodedCache(read, 3, nbytes=3 * MIB, limit_mb=1, what="train split")
    assert not cache.cached and reads == [] and [cache[2], cache[2]] == [2, 2] and reads == [2, 2]
    said = [r.getMessage() for r in caplog.records if "train split" in r.getMessage()]
    assert said == ["train split: 3 MiB decoded, over data.cache_limit_mb=1; decoded again every epoch "
                    "(cnnsuite prepare writes it once as shards to stream instead)"]  # fmt: skip
    cache = DecodedCache(read, 3, nbytes=MIB, limit_mb=1, what="val split")
    assert cache.cached and reads == [2, 2, 0, 1, 2] and cache[2] == 2 and len(reads) == 5


@pytest.mark.parametrize("limit", [-1, float("nan"), "1GB", True])
def test_a_cache_limit_that_is_not_a_size_is_one_line_naming_the_key(limit):
    with pytest.raises(ConfigError, match=r"^data\.cache_limit_mb=.*expected a size in MiB, 0 or more"):
        check_cache_limit(limit)
    assert check_cache_limit(float("inf")) == float("inf") and check_cache_limit(0) == 0.0


def test_channels_come_from_the_files_that_read(tmp_path):
    """Colour anywhere among the probed files makes 3 channels; files that do not read decide
    nothing (the folder check names them); where no probe reads, another file decides; where
    none reads, the first one's error."""
    from cnnsuite.data.folders import spread
    from cnnsuite.data.images import image_channels

    paths = [tmp_path / f"{i:03d}.png" for i in range(65)]
    for path in paths:
        path.write_bytes(b"not an image")
    with pytest.raises(BadFileError, match="000.png"):
        image_channels(paths)
    (other,) = set(paths) - set(spread(paths))  # 64 probes of 65 files: one is not probed
    Image.new("RGB", (8, 8)).save(other)
    assert image_channels(paths) == 3
    Image.new("L", (8, 8)).save(other)
    Image.new("L", (8, 8)).save(paths[0])
    assert image_channels(paths) == 1  # a probe read: the others are not opened
    Image.new("RGB", (8, 8)).save(paths[-1])
    assert image_channels(paths) == 3


@pytest.mark.parametrize("task", ["recognition2d", "localization2d", "detection2d"])
def test_image_channels_other_than_gray_or_rgb_are_one_line_naming_the_key(task):
    from cnnsuite.contract import registered_tasks

    datamodule = registered_tasks()[task].datamodule
    with pytest.raises(ConfigError, match=r"^data\.channels=2: expected 1 \(gray\), 3 \(RGB\) or null"):
        datamodule(channels=2)


def test_the_best_checkpoint_follows_the_models_own_monitor(tmp_path):
    cli = CnnSuiteCLI(
        args=["--config", str(ROOT / "tasks/detection2d/config.yaml"), "--data.data_root", str(tmp_path),
              "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )  # fmt: skip
    assert (cli.trainer.checkpoint_callback.monitor, cli.trainer.checkpoint_callback.mode) == ("val/map", "max")


# --- splits, generated data, lazy datasets ---------------------------------------------


def test_a_split_that_cannot_be_stratified_says_so():
    ids, labels = [f"{i}" for i in range(7)], [0, 0, 0, 1, 1, 2, 2]  # 2 split off for 3 classes
    with pytest.warns(UserWarning, match="cannot be stratified"):
        stratified_split(ids, labels, 0.15, 0.15, seed=0)
    # a class of one sample (a misspelt folder) is named as the user named it, and kept for
    # training: split off at random, it was never trained on and scored 0
    with pytest.warns(UserWarning, match="class 'owl' has a single sample: kept in training") as said:
        split = stratified_split(ids, [0, 0, 0, 0, 0, 0, 2], 0.15, 0.15, seed=0, names=["cat", "dog", "owl"])
    assert "6" in split["train"] and sorted(sum(split.values(), [])) == ids
    assert len([w for w in said if "single sample" in str(w.message)]) == 1, "said once, not for each split drawn"
    with warnings.catch_warnings():  # one image without objects (a detector's label -1) is no class to name
        warnings.simplefilter("error")
        split = stratified_split(ids, [0, 0, 0, 1, 1, 1, -1], 0.3, 0.3, seed=0, names=["cat", "dog"])
    assert "6" in split["train"]
    with pytest.warns(UserWarning, match=r"class 2\.5 has a single sample"):  # a task's own labels, not indices
        stratified_split(ids, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2.5], 0.15, 0.15, seed=0, names=["cat", "dog", "owl"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stratified_split([f"{i}" for i in range(40)], [i % 2 for i in range(40)], 0.25, 0.25, seed=0)


@pytest.mark.parametrize("multilabel", [False, True])
def test_a_split_keeps_each_class_share_and_is_the_same_for_the_same_seed(multilabel):
    """A run's split is a function of its seed (a rerun, a resumed run's datamodule and another task
    of the shared digit split draw the same one), each class keeps its share in train, val and test,
    and a sample is in one split only."""
    ids = [f"{i:03}" for i in range(200)]
    classes = [0] * 100 + [1] * 60 + [2] * 40
    labels = [np.eye(3, dtype=np.float32)[c] for c in classes] if multilabel else classes
    split = stratified_split(ids, labels, 0.2, 0.2, seed=3)
    assert split == stratified_split(ids, labels, 0.2, 0.2, seed=3)
    assert split != stratified_split(ids, labels, 0.2, 0.2, seed=4)
    assert sorted(sum(split.values(), [])) == ids  # each sample in one split, once
    by_id = dict(zip(ids, classes, strict=True))
    for stage, size in (("train", 120), ("val", 40), ("test", 40)):
        shares = [sum(by_id[i] == c for i in split[stage]) / size for c in range(3)]
        assert len(split[stage]) == size and shares == pytest.approx([0.5, 0.3, 0.2], abs=0.03), stage
    pairs = [i // 2 for i in range(20)]  # 10 classes of 2: 3 test samples cannot hold them all
    with pytest.warns(UserWarning, match="cannot be stratified by class .*; splitting at random"):
        drawn = [stratified_split(ids[:20], pairs, 0.15, 0.15, seed=3) for _ in range(2)]
    assert drawn[0] == drawn[1], "the random split too is the seed's"


def test_too_few_samples_to_split_is_one_line():
    # two videos in a labels file: scikit-learn's "train set will be empty" traceback before
    for labels in ([0, 1], [0, 0], [np.array([1, 0]), np.array([0, 1])]):
        with pytest.raises(ConfigError, match=r"2 samples: too few to split into train, val and test"):
            stratified_split(["a", "b"], labels, 0.1, 0.2, seed=0, names=["cat", "dog"])
    hot = [np.array([1, 0]), np.array([0, 1]), np.array([1, 1])]  # iterstrat draws 2 of the 3 for test
    with pytest.raises(ConfigError, match=r"3 samples: too few to split"):
        stratified_split(["a", "b", "c"], hot, 0.1, 0.2, seed=0)
    assert sorted(sum(stratified_split(["a", "b", "c"], [0, 1, 0], 0.1, 0.2, seed=0).values(), [])) == ["a", "b", "c"]
    # fractions that leave no training sample (0.45 + 0.45 of 5: 3 for test, then both of the rest for
    # validation) are one line too, not scikit-learn's "the resulting train set will be empty"
    for labels in ([0, 1, 0, 1, 0], [0, 1, 2, 3, 4], [0] * 5, [np.array([1, 0])] * 5):
        with pytest.raises(ConfigError, match=r"5 samples: too few to split into train, val and test \(data.val"):
            stratified_split(list("abcde"), labels, 0.45, 0.45, seed=0)


def test_each_split_gets_the_share_its_own_fraction_asks():
    ids, labels = [f"{i:02}" for i in range(40)], [i % 2 for i in range(40)]
    split = stratified_split(ids, labels, 0.1, 0.5, seed=0)  # unequal fractions: val and test cannot be confused
    assert [len(split[s]) for s in ("train", "val", "test")] == [16, 4, 20]


def test_validation_drawn_from_a_train_list_is_its_fraction_of_all_listed_samples_and_at_most_half():
    train, labels = [f"{i:02}" for i in range(40)], [i % 2 for i in range(40)]
    kept, val = split_validation(train, labels, 0.1, total=80, seed=0)  # 0.1 of 80 listed: 8 of the 40
    assert (len(kept), len(val)) == (32, 8) and sorted(kept + val) == train
    kept, val = split_validation(train, labels, 0.4, total=100, seed=0)  # 40 asked: half of train, no more
    assert (len(kept), len(val)) == (20, 20)


def test_split_fractions_that_leave_nothing_to_train_on_are_one_line_naming_the_keys():
    ids, labels = [f"{i}" for i in range(20)], [i % 2 for i in range(20)]
    # fractions summing to exactly 1 leave no training split: said as such, not as "too few samples"
    for val, test in ((0.5, 0.5), (0.6, 0.5)):
        with pytest.raises(ConfigError, match=r"^data\.val_fraction \+ data\.test_fraction = .*: expected < 1$"):
            stratified_split(ids, labels, val, test, seed=0)
    for val, test in ((0, 0.2), (0.2, 0), (1, 0.2)):
        with pytest.raises(ConfigError, match=r"^data\.(val|test)_fraction=[01]: expected a fraction between 0 and 1$"):
            stratified_split(ids, labels, val, test, seed=0)


def test_generated_data_records_its_arguments_and_other_arguments_get_their_own_folder(tmp_path):
    def write(folder):
        (folder / "data.txt").write_text("x")

    prepare_once(tmp_path / "d", write, {"size": 1})
    assert prepare_once(tmp_path / "d", write, {"size": 1}) == tmp_path / "d"
    with pytest.raises(ValueError, match=r"d: was generated with \{'size': 1\}, expected \{'size': 2\}; delete"):
        prepare_once(tmp_path / "d", write, {"size": 2})
    # a setting added since the folder was written: it was made with the setting's default
    assert prepare_once(tmp_path / "d", write, {"size": 1, "kind": "a"}, {"size": 1, "kind": "a"}) == tmp_path / "d"
    recorded_with_default = r"was generated with \{'size': 1, 'kind': 'a'\}, expected \{'size': 1, 'kind': 'b'\}"
    with pytest.raises(ValueError, match=recorded_with_default):
        prepare_once(tmp_path / "d", write, {"size": 1, "kind": "b"}, {"size": 1, "kind": "a"})

    default = Biomedical3DDataModule(data_root=str(tmp_path))
    smaller = Biomedical3DDataModule(data_root=str(tmp_path), default_size=30)
    assert default.root == tmp_path / "biomedical3d"
    assert smaller.root == tmp_path / "biomedical3d-default_size=30"


def test_generated_data_gets_the_permissions_the_umask_gives_a_new_folder(tmp_path):
    old = os.umask(0o022)
    try:
        prepare_once(tmp_path / "d", lambda folder: (folder / "data.txt").write_text("x"), {"size": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755  # a temporary folder alone is 0o700


def test_testing_builds_only_the_test_set(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=4)
    dm = RecognitionDataModule(data_dir=str(folder))
    dm.setup("test")
    dm.test_dataloader()
    assert dm.datasets.built == ["test"]


# --- backbones, metrics, BatchNorm -------------------------------------------------------


def test_a_type_error_inside_a_backbone_keeps_its_traceback():
    @register_backbone("_raises_type_error")
    def broken(spatial_dims, in_channels, width=4):
        return nn.Conv2d(in_channels, width, 3) + 1  # a bug: Module + int

    try:
        with pytest.raises(ValueError, match="model.backbone_kwargs for 'convnet': .*'widht'"):
            build_backbone("convnet", 2, 1, widht=4)
        with pytest.raises(TypeError, match="unsupported operand"):
            build_backbone("_raises_type_error", 2, 1)
    finally:
        del _BACKBONES["_raises_type_error"]


def test_auroc_ranks_probabilities_not_raw_logits():
    """torchmetrics softmaxes only a batch with values outside [0, 1]; these small logits
    rank differently raw (0.61) and as probabilities (0.85)."""
    logits = torch.tensor([[0.0, 0.2, 0.3], [0.5, 0.7, 0.8], [0.2, 0.3, 0.7], [0.9, 0.4, 0.9]])
    target = torch.tensor([0, 1, 2, 0])
    model = ClassificationModule(num_classes=3, backbone="convnet", backbone_kwargs={"channels": [4]})
    model.update_metrics("val", logits, target, None)
    expected = MulticlassAUROC(3)(logits.softmax(dim=1), target)
    assert model.val_metrics.compute()["val/auroc"] == pytest.approx(float(expected))
    assert float(MulticlassAUROC(3)(logits, target)) != pytest.approx(float(expected))


def test_a_class_the_split_lacks_has_no_score_and_no_part_in_the_means():
    """torchmetrics scored a class without a test sample 0 and averaged it in: a split lacking
    one class of three read a macro AUROC far below its two classes'. That class's accuracy is
    NaN (``null`` in metrics.json), and the means are scikit-learn's, over the classes present."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    generator = torch.Generator().manual_seed(0)
    logits, target = torch.randn(40, 3, generator=generator), torch.randint(0, 2, (40,), generator=generator)
    model = ClassificationModule(num_classes=3, backbone="convnet", backbone_kwargs={"channels": [4]})
    model.update_metrics("val", logits, target, None)
    values = {k: float(v) for k, v in model.val_metrics.compute().items()}
    probs = logits.softmax(dim=1).numpy()
    auroc = np.mean([roc_auc_score(target.numpy() == c, probs[:, c]) for c in (0, 1)])
    assert values["val/auroc"] == pytest.approx(auroc, abs=1e-6)
    recalls = [float((probs.argmax(1)[target.numpy() == c] == c).mean()) for c in (0, 1)]
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": left out, as here
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(target.numpy(), probs.argmax(1))
    assert values["val/acc_macro"] == pytest.approx(balanced) == pytest.approx(np.mean(recalls))
    assert np.isnan(values["val/acc/2"]) and values["val/acc/0"] == pytest.approx(recalls[0])
    # a split of one class ranks no 'rest' below it: no AUROC (scikit-learn refuses it; torchmetrics read 0)
    model.val_metrics.reset()
    model.update_metrics("val", logits, torch.zeros_like(target), None)
    single = {k: float(v) for k, v in model.val_metrics.compute().items()}
    assert np.isnan(single["val/auroc"]) and single["val/acc/0"] == pytest.approx(float((probs.argmax(1) == 0).mean()))


def test_acc_is_micro_accuracy_and_f1_macro_the_mean_of_each_classs_f1():
    """``acc`` is the share of samples right (torchmetrics' micro average, not its per-class
    mean); ``f1_macro`` the mean of the classes' F1, as scikit-learn computes them."""
    from sklearn.metrics import accuracy_score, f1_score

    target = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 0, 2])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 4
    model = ClassificationModule(num_classes=3, backbone="convnet", backbone_kwargs={"channels": [4]})
    model.update_metrics("val", logits, target, None)
    values = {k: float(v) for k, v in model.val_metrics.compute().items()}
    assert values["val/acc"] == pytest.approx(accuracy_score(target, predicted)) == pytest.approx(0.8)
    assert values["val/f1_macro"] == pytest.approx(f1_score(target, predicted, average="macro"))
    assert values["val/f1_macro"] != pytest.approx(values["val/acc"])


def test_label_smoothing_smooths_the_cross_entropy_of_a_single_label_model():
    model = ClassificationModule(num_classes=3, label_smoothing=0.2, backbone_kwargs={"channels": [4]})
    model.eval()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    loss = model.training_step((x, y), 0)
    expected = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.2)
    torch.testing.assert_close(loss, expected)
    assert float(loss) != pytest.approx(float(torch.nn.functional.cross_entropy(model(x), y)))


def test_a_label_without_a_positive_has_no_average_precision():
    from sklearn.metrics import average_precision_score

    generator = torch.Generator().manual_seed(0)
    logits, target = torch.randn(30, 3, generator=generator), torch.randint(0, 2, (30, 3), generator=generator)
    target[:, 2] = 0
    model = ClassificationModule(num_classes=3, multilabel=True, backbone="convnet", backbone_kwargs={"channels": [4]})
    model.update_metrics("val", logits, target, None)
    values = {k: float(v) for k, v in model.val_metrics.compute().items()}
    probs = logits.sigmoid().numpy()
    expected = np.mean([average_precision_score(target[:, c].numpy(), probs[:, c]) for c in (0, 1)])
    assert values["val/map_macro"] == pytest.approx(expected, abs=1e-6) and np.isnan(values["val/ap/2"])


def test_networks_with_batchnorm_get_precise_batchnorm_by_default():
    with_bn = ClassificationModule(num_classes=2, backbone="convnet", backbone_kwargs={"channels": [4]})
    (callback,) = with_bn.configure_callbacks()
    assert type(callback) is PreciseBatchNorm and (callback.num_batches, callback.from_training) == (10, False)
    no_bn = ClassificationModule(num_classes=2, backbone="convnet", backbone_kwargs={"channels": [4], "norm": "none"})
    assert no_bn.configure_callbacks() == []


def test_epoch_loss_is_the_batch_size_weighted_mean_of_the_steps(tmp_path):
    """Loss terms are summed on the module and logged once an epoch (``log_losses``), not by
    ``self.log`` on every step; the figure is what Lightning's ``on_epoch=True`` would give: the
    last epoch's steps only, each epoch's mean starting anew."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Recorded(L.Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.losses.append((float(outputs["loss"]), len(batch[0])))

    torch.manual_seed(0)
    model = ClassificationModule(num_classes=3, in_channels=1, backbone_kwargs={"channels": [4], "norm": "none"})
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(torch.randn(50, 1, 8, 8), torch.randint(3, (50,)))  # batches of 16, 16, 16 and 2
    recorded = Recorded()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[recorded], default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=16))
    expected = sum(loss * n for loss, n in recorded.losses[4:]) / 50  # the second epoch's
    assert len(recorded.losses) == 8
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(expected, rel=1e-5)
    assert trainer.progress_bar_metrics["train/loss"] == pytest.approx(expected, rel=1e-5)


def test_a_sheet_of_tiles_puts_each_picture_in_its_place_with_white_between():
    from cnnsuite.use.tiles import sheet, stretched

    a, b, c = (np.full((4, 5, 3), v, dtype=np.float32) for v in (0.1, 0.5, 0.9))
    out = sheet([[a, b], [c]], padding=3)
    assert out.shape == (3 + 4 + 3 + 4 + 3, 3 + 5 + 3 + 5 + 3, 3)
    assert (out[3:7, 3:8] == 0.1).all() and (out[3:7, 11:16] == 0.5).all() and (out[10:14, 3:8] == 0.9).all()
    tiles = np.zeros(out.shape[:2], dtype=bool)
    tiles[3:7, 3:8] = tiles[3:7, 11:16] = tiles[10:14, 3:8] = True
    assert (out[~tiles] == 1).all()  # white around the tiles, and where the short row ends
    with pytest.raises(ValueError, match=r"tile \(1, 0\) is \(4, 4, 3\)"):
        sheet([[a], [np.zeros((4, 4, 3))]])
    # a grey clip keeps its frames' brightness against each other: one range for all of them
    clip = stretched(np.stack([np.full((2, 2, 1), 10.0), np.full((2, 2, 1), 20.0)]))
    assert clip.shape == (2, 2, 2, 3) and clip[0].max() == 0 and np.allclose(clip[1], 1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        stretched(np.zeros((2, 2, 2)))


def test_a_sheet_of_test_samples_shows_the_mistakes_then_correct_samples_of_the_whole_split():
    right = [True] * 20
    right[3] = right[17] = False
    # folders are read class by class: the correct samples shown come from all over the split
    assert mistakes_first(right, 6) == [3, 17, 0, 7, 12, 19]
    assert mistakes_first(right, 1) == [3]  # mistakes first even when they fill the sheet
    assert sorted(mistakes_first(right, 30)) == list(range(20))  # a short split is shown whole
    assert mistakes_first([], 4) == []


def test_a_small_picture_with_labels_is_enlarged_by_a_whole_factor_to_at_least_256_pixels():
    assert [readable_scale(h, w) for h, w in ((64, 64), (200, 150), (150, 256), (40, 300))] == [4, 2, 1, 1]


def test_a_picture_of_tiles_is_one_axes_each_tile_the_width_asked(tmp_path, monkeypatch):
    """Dozens of pictures cost one Axes, not one each; the sheet is tile_inches wide per column."""
    import matplotlib.figure

    from cnnsuite.use.tiles import draw_tiles

    made = []
    add_axes = matplotlib.figure.Figure.add_axes
    monkeypatch.setattr(
        matplotlib.figure.Figure, "add_axes", lambda fig, *a, **k: made.append(1) or add_axes(fig, *a, **k)
    )
    grid = [[np.random.rand(16, 16, 3) for _ in range(8)] for _ in range(3)]
    labels = [[("7→7", "green")] * 8] * 3
    path = draw_tiles(grid, tmp_path / "sheet.png", "title", 1.0, tile_labels=labels, dpi=50)
    assert len(made) == 1
    width = Image.open(path).size[0]
    assert 8 * 50 <= width <= 8 * 50 + 60  # the picture, and the margin its labels need


def test_every_package_folder_is_one_that_an_install_copies():
    """An editable install finds a new package folder by itself; a wheel holds only those
    pyproject.toml lists."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        prefix + ".".join(init.parent.relative_to(base).parts)
        for base, prefix in ((ROOT / "src", ""), (ROOT / "tasks", "cnnsuite.tasks."))
        for init in base.rglob("__init__.py")
    }
    found = {name.rstrip(".") for name in found}
    assert found == listed


def test_every_module_of_the_suite_and_its_tasks_imports():
    """A rename that misses one importer is otherwise found only by the test, command or
    bench that happens to import that module."""
    modules = [
        module.name
        for package in (cnnsuite, cnnsuite.tasks)
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
        if not module.name.endswith("__main__")  # running it is the CLI, not an import
    ]
    assert len(modules) > 60 and any(".tasks." in name for name in modules)
    for name in modules:
        importlib.import_module(name)


def test_a_temporary_beside_a_target_gets_the_mode_of_any_new_file_and_never_an_existing_name(tmp_path, monkeypatch):
    """What is renamed into place keeps the temporary's mode: the umask's (readable by a group
    sharing runs), not tempfile's owner-only one; a name already taken is never opened."""
    import stat

    from cnnsuite import atomic

    old = os.umask(0o022)
    try:
        made = atomic.make_temporary(tmp_path, ".f.", ".tmp"), atomic.make_temporary(tmp_path, ".d.", folder=True)
    finally:
        os.umask(old)
    assert [stat.S_IMODE(p.stat().st_mode) for p in made] == [0o644, 0o755] and made[1].is_dir()
    (tmp_path / ".x.taken.tmp").write_text("another writer's")
    names = iter(["taken", "free"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))
    assert atomic.make_temporary(tmp_path, ".x.", ".tmp") == tmp_path / ".x.free.tmp"
    assert (tmp_path / ".x.taken.tmp").read_text() == "another writer's"


def test_follow_classes_leaves_data_with_a_class_the_model_lacks_as_it_is(tmp_path):
    """Data with a class the model was not trained on is not relabelled (no class of the model's
    has its index): it keeps its own classes and labels, for the checkpoint check to refuse by name."""
    folder = make_image_folder(tmp_path / "images", per_class=2)
    datamodule = RecognitionDataModule(data_dir=str(folder), channels=3)
    before = datamodule.samples()
    datamodule.follow_classes(["owl", "cat"])
    assert datamodule.class_names == ["cat", "dog", "owl"]
    assert datamodule.samples() == before
