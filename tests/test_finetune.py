"""The fine-tuning schedule: frozen backbone while the heads train, then a lower-rate backbone."""

import lightning as L
import pytest
import torch
from cnnsuite.tasks.detection2d.module import DetectionModule
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnsuite.backbone import build_backbone
from cnnsuite.training.finetune import BackboneSchedule, find_backbone

LR = 0.1


class Tiny(L.LightningModule):
    """A two-stage BatchNorm convnet and a linear head; the optimiser holds every parameter, as
    the CLI's ``optimizer:`` section builds it."""

    def __init__(self, attribute: str = "backbone") -> None:
        super().__init__()
        net = build_backbone("convnet", 2, 1, channels=(4, 8), blocks_per_stage=1, norm="batch")
        setattr(self, attribute, net)
        self.net = net
        self.head = nn.Linear(8, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.net(x)[-1].mean((2, 3))), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)]


class Snapshots(Callback):
    """The network's tensors, trainability, BatchNorm modes and optimiser groups after each epoch."""

    def __init__(self) -> None:
        self.epochs = []

    def on_train_start(self, trainer, pl_module):
        self.initial = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_end(self, trainer, pl_module):
        norms = [m for m in pl_module.net.modules() if isinstance(m, nn.BatchNorm2d)]
        groups = trainer.optimizers[0].param_groups
        self.epochs.append(
            {
                "state": {k: v.clone() for k, v in pl_module.state_dict().items()},
                "requires_grad": {f"net.{n}": p.requires_grad for n, p in pl_module.net.named_parameters()},
                "bn_training": [m.training for m in norms],
                "lrs": [g["lr"] for g in groups],
                "group_sizes": [len(g["params"]) for g in groups],
            }
        )


def loader():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def fit(model, callbacks, max_epochs, tmp_path, ckpt_path=None):
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    trainer.fit(model, loader(), ckpt_path=ckpt_path, weights_only=True)
    return trainer


def changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def test_frozen_backbone_then_stages_from_one_at_a_lower_rate(tmp_path):
    torch.manual_seed(0)
    snapshots = Snapshots()
    fit(Tiny(), [BackboneSchedule(unfreeze_at_epoch=2, from_stage=1, backbone_lr_factor=0.1), snapshots], 4,
        tmp_path)  # fmt: skip
    initial, epochs = snapshots.initial, snapshots.epochs
    for epoch in epochs[:2]:  # frozen: weights and BatchNorm statistics as they were
        assert not changed(initial, epoch["state"], "net.")
        assert not any(epoch["requires_grad"].values())
        assert not any(epoch["bn_training"])
        assert epoch["group_sizes"] == [2]  # the head's weight and bias only
    assert changed(initial, epochs[1]["state"], "head.")
    for epoch in epochs[2:]:  # stage 1 trains in its own group; stage 0 stays frozen
        assert changed(epochs[1]["state"], epoch["state"], "net.stages.1.")
        assert not changed(initial, epoch["state"], "net.stages.0.")
        assert epoch["bn_training"] == [False, True]
        trainable = {k for k, v in epoch["requires_grad"].items() if v}
        assert trainable and all(k.startswith("net.stages.1.") for k in trainable)
        assert epoch["group_sizes"] == [2, 3]  # conv weight, BN weight and bias of stage 1
        assert epoch["lrs"][1] == pytest.approx(epoch["lrs"][0] * 0.1)
    assert epochs[2]["lrs"][0] != epochs[3]["lrs"][0]  # the scheduler drives both groups


class TinyOneCycle(Tiny):
    """OneCycleLR computes each group's rate from the group's own ``max_lr`` and ``initial_lr``."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=16)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]


def test_a_one_cycle_schedule_keeps_the_backbone_at_its_lower_rate(tmp_path):
    snapshots = Snapshots()
    fit(TinyOneCycle(), [BackboneSchedule(unfreeze_at_epoch=1, backbone_lr_factor=0.1), snapshots], 4, tmp_path)
    for epoch in snapshots.epochs[1:]:
        assert epoch["lrs"][1] == pytest.approx(epoch["lrs"][0] * 0.1)


class DetectorEpochs(Callback):
    """The detector's tensors and the optimiser's groups (parameter ids, rates) after each epoch."""

    def __init__(self) -> None:
        self.epochs = []

    def on_train_start(self, trainer, pl_module):
        self.initial = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_end(self, trainer, pl_module):
        groups = trainer.optimizers[0].param_groups
        self.epochs.append({"state": {k: v.clone() for k, v in pl_module.state_dict().items()},
                            "groups": [{id(p) for p in g["params"]} for g in groups],
                            "lrs": [g["lr"] for g in groups]})  # fmt: skip


def test_the_schedule_freezes_the_backbone_inside_a_detector(tmp_path):
    """detection2d's backbone sits under torchvision's FPN, inside its detector: the task names
    it (feature_backbone), and the schedule freezes exactly it — not the FPN, not the heads —
    then trains its later stages in a group of their own at the lower rate."""
    torch.manual_seed(0)
    model = DetectionModule(num_classes=3, in_channels=1, min_size=64, max_size=64)
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)  # the CLI's
    body = model.detector.backbone.body
    assert find_backbone(model) is body
    BackboneSchedule(unfreeze_at_epoch=1).freeze_before_training(model)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"detector.backbone.body.{name}" for name, _ in body.named_parameters()}

    images = [torch.rand(1, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0 + i]]), "labels": torch.tensor([i]),
                "iscrowd": torch.tensor([0])} for i in range(2)]  # fmt: skip
    batches = DataLoader([(images, targets)], batch_size=None)
    snapshots = DetectorEpochs()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=[BackboneSchedule(unfreeze_at_epoch=1, from_stage=1), snapshots])  # fmt: skip
    trainer.fit(model, batches)
    (first, second), body_ids = snapshots.epochs, {id(p) for p in body.parameters()}
    assert not changed(snapshots.initial, first["state"], "detector.backbone.body.")  # BatchNorm statistics too
    assert changed(snapshots.initial, first["state"], "detector.backbone.fpn.")
    assert changed(snapshots.initial, first["state"], "detector.head.")
    assert len(first["groups"]) == 1 and not first["groups"][0] & body_ids
    assert second["groups"][1] == {id(p) for stage in body.stages[1:] for p in stage.parameters()}
    assert second["lrs"] == pytest.approx([0.01, 0.001])
    assert not changed(snapshots.initial, second["state"], "detector.backbone.body.stages.0.")
    for stage in range(1, len(body.stages)):
        assert changed(first["state"], second["state"], f"detector.backbone.body.stages.{stage}."), stage


def test_unfreezing_all_from_epoch_zero_trains_every_stage(tmp_path):
    snapshots = Snapshots()
    fit(Tiny(), [BackboneSchedule(unfreeze_at_epoch=0, backbone_lr_factor=0.5), snapshots], 1, tmp_path)
    epoch = snapshots.epochs[0]
    assert changed(snapshots.initial, epoch["state"], "net.stages.0.")
    assert changed(snapshots.initial, epoch["state"], "net.stages.1.")
    assert epoch["lrs"][1] == pytest.approx(epoch["lrs"][0] * 0.5)


def test_a_resumed_run_keeps_its_groups_and_trains_the_unfrozen_stages(tmp_path):
    schedule = dict(unfreeze_at_epoch=1, from_stage=1, backbone_lr_factor=0.1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit(Tiny(), [BackboneSchedule(**schedule), checkpoint], 2, tmp_path)
    snapshots = Snapshots()
    trainer = fit(Tiny(), [BackboneSchedule(**schedule), snapshots], 3, tmp_path, ckpt_path=tmp_path / "last.ckpt")
    epoch = snapshots.epochs[-1]
    assert epoch["group_sizes"] == [2, 3]
    assert epoch["lrs"][1] == pytest.approx(epoch["lrs"][0] * 0.1)
    assert changed(snapshots.initial, epoch["state"], "net.stages.1.")
    assert not changed(snapshots.initial, epoch["state"], "net.stages.0.")
    assert epoch["bn_training"] == [False, True]
    params = [id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert len(params) == len(set(params))


def test_callback_from_yaml():
    parser = ArgumentParser()
    parser.add_argument("--callbacks", type=list[Callback])
    config = parser.parse_string(
        "callbacks:\n"
        "  - class_path: cnnsuite.training.finetune.BackboneSchedule\n"
        "    init_args: {unfreeze_at_epoch: 3, from_stage: 1, backbone_lr_factor: 0.2}\n"
    )
    (callback,) = parser.instantiate_classes(config).callbacks
    assert (callback.unfreeze_at_epoch, callback.from_stage, callback.backbone_lr_factor) == (3, 1, 0.2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"unfreeze_at_epoch": -1}, "unfreeze_at_epoch=-1"),
        ({"from_stage": 1.5}, "from_stage=1.5"),
        ({"backbone_lr_factor": 0}, "backbone_lr_factor=0"),
    ],
)
def test_bad_values_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BackboneSchedule(**kwargs)


def test_from_stage_beyond_the_backbone_and_a_module_without_one(tmp_path):
    with pytest.raises(ValueError, match=r"from_stage=2: the backbone has 2 stages \(0..1\)"):
        fit(Tiny(), [BackboneSchedule(from_stage=2)], 1, tmp_path)
    with pytest.raises(ValueError, match="has no 'backbone' module and is no cnnsuite TaskModule"):
        fit(Tiny(attribute="features"), [BackboneSchedule()], 1, tmp_path)


class WithValidation(Tiny):
    """Tiny, validated each epoch, so PreciseBatchNorm recomputes statistics before it; records
    which BatchNorm layers are in train mode during the recomputation."""

    def __init__(self) -> None:
        super().__init__()
        self.recompute_modes = []

    def validation_step(self, batch, batch_idx):
        return self.training_step(batch, batch_idx)

    def forward_for_batchnorm(self, batch):
        self.recompute_modes.append([m.training for m in self.net.modules() if isinstance(m, nn.BatchNorm2d)])
        self.net(batch[0])


def fit_validated(model, callbacks, tmp_path, **trainer_args):
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0, callbacks=callbacks, **trainer_args)  # fmt: skip
    trainer.fit(model, loader(), loader())


@pytest.mark.parametrize("from_training", [False, True])
def test_precise_batchnorm_leaves_the_frozen_stages_statistics_and_mode_alone(tmp_path, from_training):
    """PreciseBatchNorm recomputes the statistics of the stages that train; a frozen stage keeps
    the source task's, in eval mode, so the stages after it see the features they will see."""
    from cnnsuite.training.callbacks import PreciseBatchNorm

    torch.manual_seed(0)
    model = WithValidation()
    frozen = {k: v.clone() for k, v in model.net.stages[0].state_dict().items()}
    before = model.net.stages[1][0][1].running_mean.clone()
    schedule = BackboneSchedule(unfreeze_at_epoch=0, from_stage=1)
    fit_validated(model, [schedule, PreciseBatchNorm(num_batches=2, from_training=from_training)], tmp_path)
    assert all(torch.equal(v, model.net.stages[0].state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(before, model.net.stages[1][0][1].running_mean)
    assert model.recompute_modes == ([] if from_training else [[False, True]] * 2)


class BatchStatistics(Callback):
    """Each training step's per-channel batch mean and unbiased variance at one BatchNorm's
    input, and the layer's running statistics when each validation starts (after any callback
    that recomputes them: this one runs last)."""

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        self.steps, self.at_validation = [], []
        norm.register_forward_pre_hook(self.record)

    def record(self, norm, inputs):
        if norm.training and torch.is_grad_enabled():  # a training step, not a recomputation's pass
            x = inputs[0].detach()
            self.steps.append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))

    def on_validation_epoch_start(self, trainer, pl_module):
        norm = pl_module.net.stages[0][0][1]
        self.at_validation.append((norm.running_mean.clone(), norm.running_var.clone(), norm.momentum))


def test_precise_batchnorm_from_training_averages_the_epochs_last_steps_without_extra_passes(tmp_path):
    """With ``from_training`` the statistics a validation sees are the plain average of the
    last ``num_batches`` training steps' batch statistics, and no batch is run again; a
    validation inside the epoch (``val_check_interval``) before those steps falls back to the
    extra passes. The layer's momentum is its own again afterwards."""
    from cnnsuite.training.callbacks import PreciseBatchNorm

    torch.manual_seed(0)
    model = WithValidation()
    norm = model.net.stages[0][0][1]
    seen = BatchStatistics(norm)
    fit_validated(model, [PreciseBatchNorm(num_batches=2, from_training=True), seen], tmp_path, val_check_interval=0.5)
    assert len(seen.steps) == 4 and len(seen.at_validation) == 2  # 4 steps, validated after the 2nd and the 4th
    assert len(model.recompute_modes) == 2  # the 2 extra passes before the first validation only
    mean, var, momentum = seen.at_validation[1]
    torch.testing.assert_close(mean, torch.stack([m for m, _ in seen.steps[2:]]).mean(0))
    torch.testing.assert_close(var, torch.stack([v for _, v in seen.steps[2:]]).mean(0))
    assert momentum == norm.momentum == 0.1
