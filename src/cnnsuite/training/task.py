"""TaskModule: the LightningModule every task builds on.

A task says three things in three hooks, called once from ``__init__``:
``configure_models`` (backbone and head), ``configure_losses`` and ``configure_metrics``
(one torchmetrics ``MetricCollection``, cloned per stage with ``train/``, ``val/`` and
``test/`` prefixes). ``monitor`` and ``mode`` say which logged value picks the best
checkpoint. Optimiser and LR scheduler come from the config's ``optimizer:`` and
``lr_scheduler:`` sections, the LightningCLI way.

Prediction on raw files (``cnnsuite predict``, ``serve``, ``export``) goes through four
more hooks: ``inference_network`` (what runs, and what export writes), ``batch_inputs``,
``describe_outputs`` (the network's tensors → one JSON-able prediction per file) and
``render_prediction`` (a picture of one). ONNX Runtime replaces only the network, so its
predictions go through the same description.

A network with BatchNorm gets :class:`~cnnsuite.training.callbacks.PreciseBatchNorm` by default
(``precise_bn_batches``): on short runs the running averages have seen too few updates
and the eval-mode network can collapse to one class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from torchmetrics import MeanMetric, MetricCollection

from ..backbone import InputAffine, StagedBackbone
from ..classpath import class_path
from ..data.inputs import Input
from ..errors import ConfigError, DivergedError
from ..use.inspectable import ClassScores, Network, middle_frame, same
from .callbacks import MonitoredKeysLogged, PreciseBatchNorm, ValidateLastEpoch, batch_norms
from .pretrained import fit_channels, weights_metadata
from .rng import rng_states, set_rng_states
from .schedules import CosineAnnealingLR
from .transfer import CHANNEL_MODES, backbone_state, source_channel_names, transfer_backbone


def channel_values(meta: dict, key: str) -> list[float]:
    """``meta[key]`` of a weights' record as per-channel numbers (one number: every channel)."""
    values = meta[key] if isinstance(meta[key], list) else [meta[key]]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(
            f"model.backbone_weights_meta.{key}={meta[key]!r}: expected a number or a list of numbers, one per channel"
        )
    return [float(v) for v in values]


#: while a checkpoint's model is built (:func:`~cnnsuite.trust.checkpoint.build_model`): a check
#: of the model with its networks on the meta device, which holds no memory, before they are built
META_CHECK: ContextVar[Callable[[L.LightningModule], None] | None] = ContextVar("meta_check", default=None)


#: the most rows of a batch (samples, or a video's clips) the network predicts at once
PREDICT_ROWS = 64


class TaskModule(L.LightningModule):
    monitor: str = "val/loss"
    mode: str = "min"
    #: where :meth:`feature_backbone`'s weights sit in this task's ``state_dict`` (what another
    #: task's ``backbone_weights`` reads from this task's checkpoints)
    backbone_prefix: str = "backbone."
    #: the direction ("max": higher is better) of every value logged as ``<stage>/<name>``, by
    #: name or name prefix (``map`` also covers ``map_50`` and ``map/<class>``): what picks the
    #: best checkpoint when ``checkpoint.monitor`` names a key without ``checkpoint.mode``
    metric_modes: dict[str, str] = {"loss": "min"}
    #: training batches that recompute BatchNorm statistics before each validation (0: off)
    precise_bn_batches: int = PreciseBatchNorm.DEFAULT_BATCHES
    #: whether the network runs in bfloat16 or float16 weights on a CPU (``trainer.precision``
    #: ``bf16-true``, ``16-true``): torchvision's box operations (``nms``, ``roi_align``) have no
    #: such CPU kernels, so a task built on them says so before its first batch
    half_weights_on_cpu: bool = True

    def __init__(self) -> None:
        super().__init__()
        # Collects the subclass's init arguments (walking up the frames); they must be
        # JSON-able so a checkpoint loads with weights_only=True.
        self.save_hyperparameters()
        names, count = self.hparams.get("class_names"), self.hparams.get("num_classes")
        if names is not None and len(names) != count:
            raise ConfigError(f"model.class_names has {len(names)} names but model.num_classes={count}")
        if names is not None and len(set(names)) != len(names):  # predictions keyed by name would merge classes
            twice = next(n for n, times in Counter(names).items() if times > 1)
            raise ConfigError(f"model.class_names names {twice!r} more than once; expected one name a class")
        check = META_CHECK.get()
        if check is not None:
            with torch.device("meta"):
                self.configure_models()
            check(self)
        self.configure_models()
        self.load_backbone_weights()
        self.follow_weights_normalisation()
        self.configure_losses()
        self.train_metrics, self.val_metrics, self.test_metrics = (
            self.configure_metrics(stage) for stage in ("train", "val", "test")
        )
        #: stage → loss term → its running mean over the epoch (see :meth:`log_losses`)
        self._loss_means: dict[str, dict[str, MeanMetric]] = {}

    @classmethod
    def mode_of(cls, key: str) -> str:
        """``"min"`` or ``"max"`` for a key this task logs during fit (``train/…``, ``val/…``);
        any other key is an error naming those it logs."""
        stage, _, name = key.partition("/")
        if stage in ("train", "val"):
            for known in sorted(cls.metric_modes, key=len, reverse=True):
                if name == known or name.startswith((f"{known}_", f"{known}/")):
                    return cls.metric_modes[known]
        logged = ", ".join(f"val/{name}" for name in cls.metric_modes)
        raise ConfigError(
            f"checkpoint.monitor={key!r}: {cls.__name__} logs no such value; it logs {logged} "
            "(and train/… of its losses), names with _ or / after them included"
        )

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        on_cpu = self.trainer.strategy.root_device.type == "cpu"
        if not self.half_weights_on_cpu and on_cpu and precision in ("bf16-true", "16-true"):
            raise ConfigError(
                f"trainer.precision={precision}: {type(self).__name__}'s box operations have no bfloat16 or float16 "
                "kernels on a CPU; use bf16-mixed (weights in float32, bfloat16 arithmetic) or 32-true"
            )

    @property
    def example_input_array(self) -> torch.Tensor | None:
        """The batch the model summary runs, in the precision the trainer runs batches in: Lightning
        converts each batch (``precision_plugin.convert_input``), not this one, and a ``bf16-true``
        model would meet float32."""
        example = self._example_input_array
        if example is None or self._trainer is None:
            return example
        return self.trainer.precision_plugin.convert_input(example)

    @example_input_array.setter
    def example_input_array(self, example: torch.Tensor | None) -> None:
        self._example_input_array = example

    @property
    def class_names(self) -> list[str]:
        """The datamodule's class names (linked by the CLI), else ``0 … num_classes-1``."""
        return self.hparams.get("class_names") or [str(i) for i in range(self.hparams.num_classes)]

    def configure_models(self) -> None:
        raise NotImplementedError

    def configure_losses(self) -> None:
        raise NotImplementedError

    def feature_backbone(self) -> nn.Module:
        """The shared CNN backbone inside this task's network: what ``backbone_weights``
        fills, what a fine-tuning schedule freezes, what ``cnnsuite inspect`` looks into. Its
        weights sit under :attr:`backbone_prefix` in this task's checkpoints."""
        return self.backbone

    def inspection_network(self, input_dims: int) -> Network:
        """What ``cnnsuite inspect`` looks at, for model inputs of ``input_dims`` axes: the
        backbone on the model's own input, and Grad-CAM of the class logit of ``forward``
        (its first output) on the deepest stage; a 2D backbone on clips (a single-frame
        baseline) is shown the middle frame. A task whose class score comes from elsewhere
        says so here."""
        backbone = self.feature_backbone()
        if not isinstance(backbone, StagedBackbone):
            raise ConfigError(f"{type(self).__name__}: its backbone is no cnnsuite StagedBackbone: nothing to inspect")
        frames = input_dims == backbone.spatial_dims + 3
        stages = f"model.{self.backbone_prefix}stages"
        return Network(backbone, middle_frame if frames else same, ClassScores(self, frames=frames), stages,
                       len(backbone.stages) - 1, "the class logit")  # fmt: skip

    def load_backbone_weights(self) -> None:
        """Start the backbone from ``model.backbone_weights`` (another run's checkpoint, of any
        task, a backbone's state dict, or a file as a library publishes it), when given: each
        tensor copied, inflated 2D → 3D, or on the first convolution mapped onto this model's
        input channels by name (the file's family names its channels, the datamodule this
        model's: ``channel_names``) or adapted to another channel count
        (``backbone_weights_channels``) where it fits; the rest is named in the log and left at
        its initialisation (:func:`cnnsuite.training.transfer.transfer_backbone`). A file of which
        nothing fits is an error."""
        path = self.hparams.get("backbone_weights")
        if not path:
            return
        channels = self.hparams.get("backbone_weights_channels", "auto")
        if channels not in CHANNEL_MODES:
            raise ConfigError(
                f"model.backbone_weights_channels={channels!r}: expected one of {', '.join(CHANNEL_MODES)}"
            )
        where = "model.backbone_weights"
        state = backbone_state(path, where=where)
        report = transfer_backbone(
            self.feature_backbone(), state, channels, source_channel_names(path, state, where),
            self.hparams.get("channel_names"),
        )  # fmt: skip
        if report.loaded == 0:
            raise ConfigError(
                f"model.backbone_weights={path}: none of its {len(state)} backbone tensors fits this backbone "
                f"(model.backbone={self.hparams.get('backbone')!r}); a checkpoint of the same backbone family is needed"
            )
        rank_zero_info(f"{path}:\n{report.summary()}")
        if self.hparams.get("backbone_weights_meta") is None:
            self.hparams["backbone_weights_meta"] = weights_metadata(str(path))

    def follow_weights_normalisation(self) -> None:
        """Feed the backbone its input as its weights expect it: when ``backbone_weights_meta``
        (the publisher's record of the weights, read from the file by :meth:`load_backbone_weights`
        and kept in every checkpoint) gives a mean and std, :meth:`renormalise_input` maps the
        task's own fixed normalisation onto them. A task whose data brings its own statistics
        (a z-score per volume, per-band statistics of its training split) keeps them."""
        meta = self.hparams.get("backbone_weights_meta") or {}
        if not isinstance(meta, dict):
            raise ConfigError(f"model.backbone_weights_meta={meta!r}: expected a mapping (mean, std, ...)")
        if meta.get("mean") is None or meta.get("std") is None:
            return
        mean, std = (channel_values(meta, key) for key in ("mean", "std"))
        if not all(v > 0 for v in std):
            raise ConfigError(f"model.backbone_weights_meta.std={meta['std']!r}: expected numbers above 0")
        rank_zero_info(f"backbone weights {meta.get('weights', '')}: {self.renormalise_input(mean, std)}")

    def renormalise_input(self, mean: list[float], std: list[float]) -> str:
        """Make the network see inputs normalised by ``mean``/``std`` (per channel, of [0, 1]
        values) and say what was done, for the log. Here: the data's fixed normalisation
        (``input_normalisation``, linked from the datamodule) is mapped onto the weights' by an
        :class:`~cnnsuite.backbone.InputAffine` at the backbone's entry; a task that normalises
        inside its network (a detector's transform) sets its own instead."""
        data = self.hparams.get("input_normalisation")
        backbone = self.feature_backbone()
        if data is None:
            return "its mean/std not applied: this task normalises by its data's own statistics"
        if not isinstance(backbone, StagedBackbone):
            return f"its mean/std not applied: {type(backbone).__name__} is no cnnsuite StagedBackbone"
        channels = len(data["mean"])
        backbone.input_map = InputAffine.between(
            data["mean"], data["std"], fit_channels(mean, channels), fit_channels(std, channels), backbone.spatial_dims
        )
        return f"inputs normalised by mean {data['mean']}, std {data['std']} are mapped onto its mean {mean}, std {std}"

    def configure_metrics(self, stage: str) -> MetricCollection:
        """The metrics logged at ``stage`` (``train``, ``val`` or ``test``)."""
        raise NotImplementedError

    def log_losses(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Add one batch's loss terms to their epoch means, logged as ``<stage>/<term>`` when
        the epoch ends (``loss`` on the progress bar): what ``self.log(..., on_step=False,
        on_epoch=True, batch_size=...)`` logs, without its cost. Each ``self.log`` call walks
        the logged value's whole state to move it to the value's device, which on a CPU weighs
        on a small network's training step once per logged term."""
        means = self._loss_means.setdefault(stage, {})
        for name, value in terms.items():
            mean = means.get(name)
            if mean is None:
                mean = means[name] = loss_mean()
            if mean.device != value.device:  # a mean restored from a checkpoint keeps its state
                mean = means[name] = mean.to(value.device)
            # The batch as batch_size equal entries: torchmetrics 1.9 drops update()'s weight
            # when nan_strategy="disable", and the NaN check would cost a GPU sync per step.
            mean.update(value.detach().expand(batch_size))

    def log_epoch_losses(self, stage: str) -> None:
        """Log the epoch's mean of each loss term :meth:`log_losses` saw (batch-size weighted,
        over every rank under DDP), then start the next epoch's."""
        for name, mean in self._loss_means.get(stage, {}).items():
            if mean.update_count:
                self.log(f"{stage}/{name}", mean.compute(), prog_bar=name == "loss")
            mean.reset()

    def configure_callbacks(self) -> list[L.Callback]:
        """PreciseBatchNorm when the network has BatchNorm, Lightning's LearningRateMonitor
        (the learning rate once an epoch in ``metrics.csv`` and TensorBoard, as ``lr-<optimizer>``)
        when the run logs, :class:`~cnnsuite.training.callbacks.ValidateLastEpoch` when
        validation skips epochs, and :class:`~cnnsuite.training.callbacks.MonitoredKeysLogged`;
        one the trainer already has, with its own settings, is kept."""
        trainer = self._trainer
        has = {type(cb) for cb in trainer.callbacks} if trainer is not None else set()
        callbacks: list[L.Callback] = []
        if batch_norms(self) and self.precise_bn_batches >= 1 and not any(issubclass(t, PreciseBatchNorm) for t in has):
            callbacks.append(PreciseBatchNorm(self.precise_bn_batches))
        if trainer is not None and trainer.loggers and not any(issubclass(t, LearningRateMonitor) for t in has):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        if trainer is not None and (trainer.check_val_every_n_epoch or 1) > 1 and ValidateLastEpoch not in has:
            callbacks.append(ValidateLastEpoch())
        if trainer is not None and MonitoredKeysLogged not in has:
            callbacks.append(MonitoredKeysLogged())
        return callbacks

    def on_train_start(self) -> None:
        """A schedule that follows the run (:class:`cnnsuite.training.schedules.CosineAnnealingLR` without
        ``T_max``) learns its length: ``max_epochs``, or ``max_steps`` (stepped each step) when
        the run is counted in steps only."""
        trainer = self.trainer
        check_eps_in_weights_dtype(trainer)
        for config in trainer.lr_scheduler_configs:
            if not isinstance(config.scheduler, CosineAnnealingLR):
                continue
            if trainer.max_epochs is not None and trainer.max_epochs > 0:
                config.scheduler.follow(trainer.max_epochs)
            elif config.scheduler.follows_run:
                config.scheduler.follow(trainer.max_steps)
                config.interval = "step"

    def on_before_backward(self, loss) -> None:
        """A non-finite loss ends training with a message naming the step; no checkpoint is
        written from the spoiled weights, so ``last.ckpt`` stays the last good one. Every rank
        takes the decision together (one rank raising alone would leave the others waiting)."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            saved = [cb.last_model_path for cb in self.trainer.checkpoint_callbacks if cb.last_model_path]
            last = saved[0] if saved else "none yet"
            raise DivergedError(
                f"training loss is {float(loss):g} at step {self.trainer.global_step} (epoch {self.current_epoch}); "
                f"stopped; last good checkpoint: {last}. A lower learning rate or gradient clipping often helps."
            )

    def forward_for_batchnorm(self, batch) -> None:
        """Run one training batch through the network in train mode, for
        :class:`~cnnsuite.training.callbacks.PreciseBatchNorm` (no loss, no metrics)."""
        self(batch[0])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record which classes rebuild this run, so evaluation needs only the file, and the
        random generators' states and the training epoch's metric states, so a run resumed
        in the middle of an epoch draws and logs what the whole run would have."""
        checkpoint["rng_states"] = rng_states()
        checkpoint["train_metric_states"] = {
            "metrics": {name: metric_state(m) for name, m in self.train_metrics.items(keep_base=True)},
            "losses": {name: metric_state(m) for name, m in self._loss_means.get("train", {}).items()},
        }
        classes = {"model": class_path(self)}
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None:
            classes["datamodule"] = class_path(datamodule)
        checkpoint["cnnsuite_classes"] = classes

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming a fit restores the random generators (rank 0's, under DDP); rebuilding a
        model for evaluation leaves them alone."""
        if self._trainer is None or self.trainer.state.fn != "fit":
            return
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        # Under DDP the file holds rank 0's share of the epoch's metrics: the other ranks start theirs anew.
        saved = checkpoint.get("train_metric_states", {})
        if self.trainer.global_rank == 0:
            for name, state in saved.get("metrics", {}).items():
                if name in self.train_metrics:
                    set_metric_state(self.train_metrics[name], state)
            for name, state in saved.get("losses", {}).items():
                set_metric_state(self._loss_means.setdefault("train", {}).setdefault(name, loss_mean()), state)

    def on_test_epoch_start(self) -> None:
        #: what each test batch left for evaluation's pictures (:meth:`keep_test_outcome`), in
        #: the loader's order: they draw from it instead of predicting the split again
        self.test_outcomes: list = []

    def keep_test_outcome(self, outcome) -> None:
        """Keep one test batch's ``outcome`` (tensors, or collections of them, detached and
        moved to the CPU) for :meth:`write_plots`."""
        self.test_outcomes.append(apply_to_collection(outcome, torch.Tensor, lambda t: t.detach().cpu()))

    def tested(self, dataset) -> tuple[torch.Tensor, ...] | list:
        """The test pass's outcomes of every sample of the test ``dataset``, in its order: a
        task that keeps a tuple of tensors a batch gets each field concatenated, one that keeps
        a list a batch (one entry a sample) gets the lists joined. Evaluation's pictures show
        them without running the network again."""
        batches = self.test_outcomes
        if batches and isinstance(batches[0], tuple):
            joined = tuple(torch.cat(field) for field in zip(*batches, strict=True))
            scored = len(joined[0])
        else:
            joined = [sample for batch in batches for sample in batch]
            scored = len(joined)
        if scored != len(dataset):
            raise RuntimeError(f"the test pass scored {scored} samples, the test split has {len(dataset)}")
        return joined

    def write_plots(self, out_dir: Path, datamodule: L.LightningDataModule) -> list[Path]:
        """Task-specific pictures of the last test run (evaluation calls this)."""
        return []

    # --- prediction on raw files ----------------------------------------------------------
    def inference_network(self) -> nn.Module:
        """The network prediction runs and export writes: a batch tensor in, a tensor or a
        tuple of tensors out (the default: this module's ``forward``)."""
        return self

    @property
    def inference_outputs(self) -> dict[str, str]:
        """Name → meaning of each output of :meth:`inference_network`, in order (export names
        the file's outputs so and writes the meanings beside it)."""
        return {"output": f"the output of {type(self).__name__}.inference_network()"}

    def inference_dynamic_shapes(self, batch: torch.export.Dim) -> dict[int, object]:
        """The input axes that export leaves free: the batch (the sample's size is the run's
        preprocessed size, fixed)."""
        return {0: batch}

    def batch_inputs(self, samples: list) -> torch.Tensor:
        """The network's batch for the ``sample`` of each input (default: stacked)."""
        return torch.stack(samples)

    def synthetic_inputs(self, datamodule, size: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """A batch of ``size`` random inputs of :meth:`inference_network`, as :meth:`batch_inputs`
        gives it: what export checks its file on when no files are given. The default: samples
        of the data's :attr:`~cnnsuite.data.TaskDataModule.input_shape`, or None when the data
        has no fixed shape. A model that brings every input to a size of its own (a detector's
        resize) makes them without the data."""
        shape = datamodule.input_shape
        return None if shape is None else torch.randn(size, *shape, generator=generator)

    def describe_batch_inputs(self) -> str:
        """What :meth:`batch_inputs` does, in words, for the JSON beside an export."""
        return "samples stacked along a new first (batch) axis"

    def describe_labels(self) -> dict:
        """How the outputs become labels, beyond :attr:`inference_outputs`' words, for the JSON
        beside an export (a classifier's: whether they are independent sigmoids, and the
        thresholds); the default has nothing to add."""
        return {}

    def check_input(self, item: Input) -> None:
        """Raise :class:`~cnnsuite.data.errors.BadFileError` naming ``item``'s file where the
        network cannot take it, before it joins a batch, which would fail whole (prediction
        answers for the other files). The default takes every input its datamodule read."""

    def describe_outputs(self, outputs: tuple[torch.Tensor, ...], inputs: list[Input]) -> list[dict]:
        """One JSON-able prediction per input, from the network's outputs for their batch."""
        raise NotImplementedError(f"{type(self).__name__} does not describe predictions")

    def render_prediction(self, item: Input, prediction: dict, path: Path) -> None:
        """Draw ``prediction`` on ``item`` into the PNG file ``path``."""
        raise NotImplementedError(f"{type(self).__name__} does not draw predictions")

    @torch.no_grad()
    def predict_inputs(self, inputs: list[Input], network=None) -> list[dict]:
        """Predictions for ``inputs`` (read by the datamodule's ``read_input``); ``network``
        replaces :meth:`inference_network` (ONNX Runtime, say: a batch in, tensors out). The
        batch runs :data:`PREDICT_ROWS` rows at a time: an input of many rows (a long video's
        clips) would otherwise take every row's activations at once."""
        self.eval()
        batch = self.batch_inputs([item.sample for item in inputs])
        if network is None:
            network = self.inference_network()
            batch = batch.to(self.device)
        parts = []
        for rows in batch.split(PREDICT_ROWS):
            outputs = network(rows)
            outputs = outputs if isinstance(outputs, tuple | list) else [outputs]
            parts.append([o.detach().float().cpu() for o in outputs])
        return self.describe_outputs(tuple(torch.cat(o) for o in zip(*parts, strict=True)), inputs)


def loss_mean() -> MeanMetric:
    """The running mean of one loss term over an epoch (see :meth:`TaskModule.log_losses`)."""
    # no NaN check per step: a non-finite loss stops training (on_before_backward)
    return MeanMetric(nan_strategy="disable", sync_on_compute=True)


def metric_state(metric) -> dict:
    """A torchmetrics metric's accumulated state and update count, as tensors and ints
    (torchmetrics keeps them out of ``state_dict``)."""
    return {"state": dict(metric.metric_state), "updates": metric.update_count}


def set_metric_state(metric, saved: dict) -> None:
    """Put back what :func:`metric_state` took, on the metric's device."""
    for key, value in saved["state"].items():
        if key in metric.metric_state:
            moved = [v.to(metric.device) for v in value] if isinstance(value, list) else value.to(metric.device)
            setattr(metric, key, moved)
    metric._update_count = saved["updates"]  # what torchmetrics' own state loading leaves out
    metric._computed = None


def check_eps_in_weights_dtype(trainer: L.Trainer) -> None:
    """An optimizer's ``eps`` that the weights' dtype rounds to 0 (AdamW's 1e-8 in ``16-true``'s
    float16, whose state follows the weights) divides 0 by 0 for a weight without gradient at the
    first step, and every weight is NaN soon after: one line before training."""
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            eps = group.get("eps")
            dtypes = {p.dtype for p in group["params"] if p.is_floating_point()}
            if not isinstance(eps, float) or eps <= 0:
                continue
            for dtype in dtypes:
                if torch.tensor(eps, dtype=dtype).item() == 0:
                    raise ConfigError(
                        f"trainer.precision={trainer.precision}: {type(optimizer).__name__}'s eps {eps:g} is 0 in "
                        f"{str(dtype).removeprefix('torch.')} weights, and they would turn NaN at the first step; "
                        "use 16-mixed or bf16-true, or an eps float16 can hold (--optimizer.init_args.eps 1e-4)"
                    )
