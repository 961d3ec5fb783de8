"""Loaders that size themselves: the worker count from the machine's usable cores, pinned
memory on CUDA, and the batch augmentations run after the batch reaches the model's device,
in training only, drawing what the loader drew before."""

import argparse
import itertools
import os
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from cnnsuite.tasks.localization2d.datamodule import LocalizationDataModule
from cnnsuite.tasks.multispectral3d.datamodule import MultispectralDataModule
from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule
from cnnsuite.tasks.video3d.datamodule import VideoDataModule
from conftest import make_image_folder, task_config
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from PIL import Image
from test_localization2d import make_csv_folder
from test_multispectral3d import make_folder
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cnnsuite.cli import main
from cnnsuite.data.augment import BatchBoxAffine, BatchFlipsAndTurns, BatchRandomAffine, BatchRandomResizedCrop
from cnnsuite.data.datamodule import auto_workers
from cnnsuite.errors import ConfigError
from cnnsuite.training.callbacks import PreciseBatchNorm, batches_aside
from cnnsuite.trust.checkpoint import add_data_options


def fake_cores(monkeypatch, cores: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (3, 2), (6, 5), (16, 8)])
def test_auto_workers_are_the_usable_cores_less_one_capped(monkeypatch, image_folder, cores, workers):
    fake_cores(monkeypatch, cores)
    dm = RecognitionDataModule(data_dir=str(image_folder), batch_size=4)
    assert dm.hparams.num_workers == "auto"
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert (loader.num_workers, loader.persistent_workers) == (workers, workers > 0)


def test_auto_workers_share_the_cores_between_the_trainers_processes(monkeypatch, image_folder):
    fake_cores(monkeypatch, 16)
    dm = RecognitionDataModule(data_dir=str(image_folder))
    for devices, workers in ((1, 8), (4, 3), (8, 0)):  # DDP: each process starts its own workers
        dm.trainer = SimpleNamespace(num_devices=devices)
        assert dm.num_workers == workers


def test_auto_workers_count_the_cpus_where_affinity_is_unknown(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert auto_workers() == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # undeterminable: in the training process
    assert auto_workers() == 0


def test_a_worker_count_given_is_kept_and_a_bad_one_named(monkeypatch, image_folder):
    fake_cores(monkeypatch, 16)
    for given in (0, 3):
        dm = RecognitionDataModule(data_dir=str(image_folder), batch_size=4, num_workers=given)
        dm.setup("fit")
        assert dm.train_dataloader().num_workers == given and dm.hparams.num_workers == given
    for bad in (-1, "many", True, 2.5):
        with pytest.raises(ConfigError, match=r"data\.num_workers=.*expected auto or a count"):
            RecognitionDataModule(data_dir=str(image_folder), num_workers=bad)


def test_the_cli_reads_auto_and_a_count(capsys):
    config = task_config("recognition2d")
    for extra, shown in (([], "num_workers: auto"), (["--data.num_workers", "3"], "num_workers: 3")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", config, *extra, "--print_config"])
        assert exit_info.value.code == 0 and shown in capsys.readouterr().out


def test_evaluate_and_predict_take_auto_or_a_count():
    parser = argparse.ArgumentParser()
    add_data_options(parser)
    assert parser.parse_args(["--data.num_workers", "auto"]).num_workers == "auto"
    assert parser.parse_args(["--data.num_workers", "3"]).num_workers == 3


def test_pin_memory_follows_the_trainers_accelerator(image_folder):
    dm = RecognitionDataModule(data_dir=str(image_folder), batch_size=4)
    dm.setup("fit")
    assert not dm.train_dataloader().pin_memory and not dm.test_dataloader().pin_memory  # no trainer
    for accelerator, pinned in ((CPUAccelerator(), False), (CUDAAccelerator(), True)):
        dm.trainer = SimpleNamespace(accelerator=accelerator, world_size=1, global_rank=0,
                                     state=SimpleNamespace(fn="fit"))  # fmt: skip
        assert dm.train_dataloader().pin_memory is pinned and dm.val_dataloader().pin_memory is pinned


class Recorder(L.LightningModule):
    """Keeps the images of every batch each stage receives (after Lightning moved them)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(1)
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, list[torch.Tensor]] = {}
        self.example_input_array = torch.zeros(2, 1, 16, 16)  # the model summary runs it through the hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def record(self, stage: str, batch) -> torch.Tensor:
        self.seen.setdefault(stage, []).append(batch[0].detach().cpu().clone())
        return self.weight * self(batch[0]).mean()

    def training_step(self, batch, index):
        return self.record("train", batch)

    def validation_step(self, batch, index):
        self.record("val", batch)

    def test_step(self, batch, index):
        self.record("test", batch)

    def predict_step(self, batch, index):
        self.record("predict", batch)

    def forward_for_batchnorm(self, batch) -> None:
        self.record("precise_bn", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def copies_of_one_image(root, per_class=6):
    """Two classes of one and the same gray image: a batch's images differ only by augmentation."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, size=(16, 16), dtype=np.uint8))
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            image.save(root / name / f"{index}.png")
    return root


def all_equal(images: torch.Tensor) -> bool:
    return all(torch.equal(image, images[0]) for image in images[1:])


def test_augmentation_runs_after_the_transfer_in_training_only(tmp_path):
    """The loader hands out plain batches; Lightning's ``on_after_batch_transfer`` augments the
    training ones (and PreciseBatchNorm's, training batches too), never validation, test or
    prediction, nor the model summary's example input."""
    dm = RecognitionDataModule(data_dir=str(copies_of_one_image(tmp_path / "one")), image_size=16, batch_size=4,
                               val_fraction=0.25, test_fraction=0.25)  # fmt: skip
    dm.setup("fit")
    assert all_equal(next(iter(dm.train_dataloader()))[0])  # the loader itself does not augment
    L.seed_everything(0)
    model = Recorder()
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, callbacks=[PreciseBatchNorm(1)], default_root_dir=tmp_path, **quiet
    )
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    trainer.predict(model, dm)
    assert set(model.seen) == {"train", "precise_bn", "val", "test", "predict"}
    for stage, batches in model.seen.items():
        augmented = stage in ("train", "precise_bn")
        assert all(not all_equal(images) if augmented else all_equal(images) for images in batches), stage


def test_recognition_augmentation_after_transfer_draws_what_the_loader_drew(image_folder):
    """The random maps now move normalised images, bringing in normalised black: the batch is
    the one the loader made by moving [0, 1] pixels and normalising them, draw for draw."""
    dm = RecognitionDataModule(data_dir=str(image_folder), image_size=16, batch_size=4)
    dm.setup("fit")
    train = dm.datasets["train"]
    pixels = torch.stack([train.images[i] for i in range(len(train))])
    normalise = v2.Normalize(**dm.input_normalisation)
    loaded = torch.stack([image for image, _ in train.__getitems__(list(range(len(train))))])
    torch.testing.assert_close(loaded, normalise(pixels), rtol=0, atol=0)  # the loader's: not moved
    torch.manual_seed(0)
    expected = normalise(BatchRandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))(pixels))
    torch.manual_seed(0)
    images, labels = dm.augment_batch([loaded, torch.arange(len(train))])
    torch.testing.assert_close(images, expected)
    assert torch.equal(labels, torch.arange(len(train)))
    assert dm.augment_batch([loaded, labels])[0].shape == loaded.shape
    plain = RecognitionDataModule(data_dir=str(image_folder), image_size=16, augment=False)
    assert plain.augment_batch([loaded, labels])[0] is loaded


@pytest.mark.parametrize("hflip", [False, True])
def test_localization_augmentation_after_transfer_draws_what_the_loader_drew(tmp_path, hflip):
    dm = LocalizationDataModule(data_dir=str(make_csv_folder(tmp_path / "user")), image_size=32, hflip=hflip)
    dm.setup("fit")
    train = dm.datasets["train"]
    decoded = [train.decoded[i] for i in range(len(train))]
    pixels, boxes = torch.stack([image for image, _ in decoded]), torch.stack([box for _, box in decoded])
    normalise = v2.Normalize(**dm.input_normalisation)
    loaded = [train[i] for i in range(len(train))]
    images, labels, fractions = (torch.stack([torch.as_tensor(item[k]) for item in loaded]) for k in range(3))
    torch.testing.assert_close(images, normalise(pixels), rtol=0, atol=0)  # the loader's: not moved
    torch.testing.assert_close(fractions, boxes / 32, rtol=0, atol=0)
    torch.manual_seed(0)
    moved, moved_boxes = BatchBoxAffine(0.1, (0.85, 1.15), hflip)(pixels, boxes)
    torch.manual_seed(0)
    out_images, out_labels, out_boxes = dm.augment_batch([images, labels, fractions])
    torch.testing.assert_close(out_images, normalise(moved))
    torch.testing.assert_close(out_boxes, moved_boxes / 32)
    assert torch.equal(out_labels, labels) and not torch.equal(out_boxes, fractions)


def test_precise_batchnorms_copy_of_a_loader_pins_memory_as_the_loader_does():
    for pinned in (False, True):
        loader = DataLoader(list(range(4)), batch_size=2, num_workers=1, persistent_workers=True, pin_memory=pinned)
        assert batches_aside(loader).pin_memory is pinned


def test_a_folder_is_listed_once_per_datamodule(monkeypatch, image_folder):
    """The split, each stage's dataset and the class weights all ask for the samples: a folder
    of 100,000 files is walked once, not once each."""
    from cnnsuite.data import datamodule as module

    calls = []
    list_samples = module.list_samples
    monkeypatch.setattr(module, "list_samples", lambda *a, **k: calls.append(1) or list_samples(*a, **k))
    data = RecognitionDataModule(data_dir=str(image_folder), batch_size=4, num_workers=0)
    data.setup("fit")
    data.setup("test")
    assert all(len(data.datasets[s]) for s in ("train", "val", "test"))
    assert data.split_targets("train")
    assert len(calls) == 1


def test_batch_random_affine_draws_over_the_whole_ranges_as_v2_does():
    """Each move is drawn as ``v2.RandomAffine`` draws it: an angle in ± degrees, a shift either way
    up to ``translate`` of the width and height, a scale within its range; each over all of it."""
    draws = BatchRandomAffine(degrees=10, translate=(0.1, 0.2), scale=(0.8, 1.2)).draw(
        2000, torch.Generator().manual_seed(0)
    )
    for values, low, high in ((draws["angle"], -10, 10), (draws["factor"], 0.8, 1.2)):
        values = torch.rad2deg(values) if low == -10 else values
        assert low <= values.min() < low + 0.05 * (high - low) and high - 0.05 * (high - low) < values.max() <= high
    for axis, most in enumerate((0.1, 0.2)):
        shift = draws["shift"][:, axis]
        assert -most <= shift.min() < -0.9 * most and 0.9 * most < shift.max() <= most  # left and right, up and down
        assert abs(shift.mean()) < 0.1 * most


def test_batch_random_affine_moves_a_wide_image_as_v2_affine_does():
    """On an image wider than tall the normalised axes have different pixel lengths: a rotation,
    shift and zoom are ``v2.functional.affine``'s, pixel for pixel, not a sheared copy."""
    images = torch.rand(2, 1, 12, 24, generator=torch.Generator().manual_seed(0))
    moves = [(30.0, (0.1, -0.2), 1.1), (-50.0, (0.0, 0.1), 0.9)]  # degrees, shift (of width, height), scale
    params = {
        "angle": torch.deg2rad(torch.tensor([angle for angle, _, _ in moves], dtype=torch.float64)),
        "shift": torch.tensor([shift for _, shift, _ in moves], dtype=torch.float64),
        "factor": torch.tensor([factor for _, _, factor in moves], dtype=torch.float64),
    }
    moved = BatchRandomAffine().warp(images, params)
    for i, (angle, (dx, dy), factor) in enumerate(moves):
        theirs = TF.affine(images[i], angle=angle, translate=[dx * 24, dy * 12], scale=factor, shear=[0.0, 0.0],
                           interpolation=v2.InterpolationMode.NEAREST)  # fmt: skip
        torch.testing.assert_close(moved[i], theirs, rtol=0, atol=0)


def test_batch_flips_and_turns_draw_each_volumes_own_move_as_monai_does():
    """Every output volume is its input under one of the moves MONAI's RandFlip, RandRotate90
    and RandShiftIntensity draw (flips, 0-3 quarter turns in the square plane, a shift within
    ±0.1), each drawn per volume: about half of the volumes are flipped along the axis out of
    the plane and half shifted; a third turned by an odd number of quarters (half turned, by
    1 to 3: a half turn is also two flips)."""
    torch.manual_seed(0)
    volumes = torch.randn(400, 1, 4, 4, 3)
    given = volumes.clone()
    moved = BatchFlipsAndTurns(3, [(0, 1)], prob=0.5, shift=0.1)(volumes)
    assert torch.equal(volumes, given)  # the moves are made on a copy: the batch given is left as it was
    flips = odd_turns = shifts = 0
    for original, out in zip(volumes, moved, strict=True):
        offset = float((out - original).mean())  # flips and turns keep the mean, a shift adds to it
        found = []
        for k in range(4):
            for axes in itertools.product((False, True), repeat=3):
                candidate = torch.rot90(original.flip([1 + a for a in range(3) if axes[a]]), k, dims=(1, 2))
                if torch.allclose(candidate + offset, out, atol=1e-5):
                    found.append((k, axes))
        assert found and abs(offset) <= 0.1 + 1e-6
        odd_turns += found[0][0] % 2
        flips += found[0][1][2]  # the axis out of the turned plane: its flip is told apart
        shifts += abs(offset) > 1e-7
    assert 100 < odd_turns < 170 and 150 < shifts < 250 and 150 < flips < 250
    # a plane of two sizes (4 x 3 here) is not turned, and nothing is drawn for it
    torch.manual_seed(1)
    square_only = BatchFlipsAndTurns(3, [(0, 1)], prob=0.5, shift=0.1)(volumes)
    torch.manual_seed(1)
    torch.testing.assert_close(BatchFlipsAndTurns(3, [(0, 1), (1, 2)], prob=0.5, shift=0.1)(volumes), square_only)


def test_batch_random_resized_crops_are_torchvisions_crops_one_per_clip():
    """A crop on whole pixels reads what ``v2.functional.resized_crop`` gives (inside the crop:
    on its edge rows the frame's pixels beyond it are read, not the crop's edge held), a flip
    mirrors it, every frame of a clip gets its clip's crop, and the draws are
    ``RandomResizedCrop``'s: area and width/height within range, inside the frame, and the
    frame's centre at the nearest ratio when no try fits."""
    crops = BatchRandomResizedCrop(scale=(0.6, 1.0), hflip=True)
    images = torch.rand(2, 3, 16, 20)
    box = torch.tensor([[4 / 20, 2 / 16, 12 / 20, 8 / 16]] * 2, dtype=torch.float64)  # left 4, top 2, 12 x 8
    out = crops.warp(images, {"box": box, "flip": torch.tensor([False, True])})
    expected = TF.resized_crop(images, 2, 4, 8, 12, [16, 20], antialias=False)
    torch.testing.assert_close(out[0, :, 1:-1, 1:-1], expected[0, :, 1:-1, 1:-1])
    torch.testing.assert_close(out[1, :, 1:-1, 1:-1], expected[1].flip(-1)[:, 1:-1, 1:-1])
    clips = torch.rand(64, 1, 1, 16, 16).expand(64, 3, 4, 16, 16)  # each clip's 4 frames alike
    moved = crops(clips)
    assert torch.equal(moved, moved[:, :, :1].expand_as(moved))
    assert not torch.allclose(moved, clips, atol=1e-3)
    drawn = crops.draw(4000, 320, 480, torch.Generator().manual_seed(0))
    left, top, w, h = drawn["box"].unbind(1)
    area, ratio = w * h, w * 480 / (h * 320)
    assert area.min() >= 0.6 - 1e-9 and area.max() <= 1 and 0.75 - 1e-9 <= ratio.min() and ratio.max() <= 4 / 3 + 1e-9
    assert left.min() >= 0 and top.min() >= 0 and (left + w).max() <= 1 + 1e-9 and (top + h).max() <= 1 + 1e-9
    assert 0.45 < drawn["flip"].float().mean() < 0.55
    torch.manual_seed(0)  # torchvision's draws on a frame of that shape: a wide frame takes no large tall crop
    frame = torch.empty(1, 320, 480)
    theirs = [v2.RandomResizedCrop.get_params(frame, [0.6, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)]
    their_area = torch.tensor([ch * cw / (320 * 480) for _, _, ch, cw in theirs], dtype=torch.float64)
    assert abs(area.mean() - their_area.mean()) < 0.01 and abs(area.std() - their_area.std()) < 0.01
    whole = BatchRandomResizedCrop(scale=(1.0, 1.0), ratio=(2.0, 3.0)).draw(3, 32, 32)  # no try fits a square
    torch.testing.assert_close(whole["box"], torch.tensor([[0, 0.25, 1, 0.5]] * 3, dtype=torch.float64))


def ddp_batches(task: str, tmp_path):
    """A datamodule of ``task`` and a training batch of one sample repeated (what each rank's
    augmentation makes of it is all that differs)."""
    if task == "biomedical3d":
        from cnnsuite.tasks.biomedical3d.datamodule import Biomedical3DDataModule

        dm = Biomedical3DDataModule(data_dir=None, data_root=str(tmp_path), spatial_size=[8, 8, 8])
        return dm, (torch.randn(1, 1, 8, 8, 8).expand(16, 1, 8, 8, 8).clone(), torch.zeros(16))
    if task == "recognition2d":
        dm = RecognitionDataModule(data_dir=str(make_image_folder(tmp_path / "images")), image_size=16)
        dm.setup("fit")
        return dm, [torch.rand(1, 3, 16, 16).expand(16, 3, 16, 16).clone(), torch.zeros(16)]
    if task == "multispectral3d":
        dm = MultispectralDataModule(data_dir=str(make_folder(tmp_path / "patches")))
        return dm, [torch.randn(1, 1, 13, 16, 16).expand(16, 1, 13, 16, 16).clone(), torch.zeros(16)]
    if task == "video3d":
        dm = VideoDataModule(data_dir=None)
        return dm, [torch.randn(1, 3, 4, 16, 16).expand(16, 3, 4, 16, 16).clone(), torch.zeros(16)]
    dm = LocalizationDataModule(data_dir=str(make_csv_folder(tmp_path / "boxes")), image_size=32)
    dm.setup("fit")
    box = torch.tensor([[0.3, 0.3, 0.7, 0.7]]).expand(16, 4).clone()
    return dm, [torch.rand(1, 3, 32, 32).expand(16, 3, 32, 32).clone(), torch.zeros(16), box]


@pytest.mark.parametrize("task", ["biomedical3d", "recognition2d", "localization2d", "multispectral3d", "video3d"])
def test_each_ddp_rank_draws_its_own_batch_augmentation(tmp_path, task):
    """Under DDP every rank starts from the same seed; each draws its batch moves from a
    generator of its own, and in one process from torch's global one (which checkpoints carry)."""
    dm, batch = ddp_batches(task, tmp_path)

    def augmented(trainer):
        dm.trainer = trainer
        dm._augment_generator = None  # a new fit
        torch.manual_seed(0)  # seed_everything gives every rank the same seed
        return dm.augment_batch(batch)[0]

    rank0 = augmented(SimpleNamespace(world_size=2, global_rank=0))
    rank1 = augmented(SimpleNamespace(world_size=2, global_rank=1))
    assert not torch.equal(rank0, rank1)
    assert torch.equal(augmented(SimpleNamespace(world_size=2, global_rank=0)), rank0)
    assert torch.equal(augmented(SimpleNamespace(world_size=1, global_rank=0)), augmented(None))


def test_val_and_test_loaders_keep_their_split_order(tmp_path):
    """Validation and test batches come in the split's order (a per-sample output lines up with
    the split's ids), and make no draw from torch's generator that training's shuffle uses."""
    dm = RecognitionDataModule(data_dir=str(make_image_folder(tmp_path / "images", per_class=8)), batch_size=4)
    dm.setup("fit")
    for stage in ("val", "test"):
        loader = getattr(dm, f"{stage}_dataloader")()
        assert list(loader.batch_sampler.sampler) == list(range(len(dm.datasets[stage])))
    torch.manual_seed(0)
    drawn = torch.rand(1)
    torch.manual_seed(0)
    [list(dm.val_dataloader()) for _ in range(2)]
    assert torch.equal(torch.rand(1), drawn)
