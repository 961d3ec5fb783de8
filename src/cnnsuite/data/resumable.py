"""A training loader that a run killed in the middle of an epoch resumes exactly.

Lightning saves a training loader's ``state_dict()`` in every checkpoint and, resuming in
the middle of an epoch, hands it back to ``load_state_dict()`` before it asks for the first
batch (``fit_loop.state_dict.combined_loader``). A plain ``DataLoader`` has no state: its
``RandomSampler`` draws a new order from the global random generator, so a resumed epoch
re-draws its batches (Lightning warns "not resumable"). Here:

- :class:`EpochSampler` is a ``DistributedSampler`` (Lightning leaves it in place under
  DDP, where it would have put its own): the order of an epoch is a function of
  ``(seed, epoch)`` only, each rank taking its shard of it, and a pass can start part-way.
- :class:`ResumableDataLoader` (the datamodule's training loader) counts the batches
  the epoch's pass has handed out; its state is ``(seed, epoch, batches)``, and a restored
  loader leaves out the batches the run has already trained on. Its generator is re-seeded
  from ``(seed, epoch, rank)`` at the start of each epoch, so a pass draws nothing from the
  global generator, whose state the checkpoint restores for the augmentations drawn in this
  process: a whole batch's after its transfer to the device
  (:meth:`~cnnsuite.data.TaskDataModule.augment_batch`), whatever the workers, and a
  dataset's own with ``num_workers: 0``. Worker processes draw from their own generators,
  which a resumed run starts afresh: with workers the order resumes exactly, a dataset's
  random draws in them not.

Another pass over the loader inside an epoch (:class:`~cnnsuite.training.callbacks.PreciseBatchNorm`
takes a few training batches before each validation) sees the epoch's order from its start
and counts nowhere: only the first pass after ``set_epoch`` (or after a restore) is the
epoch's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def pass_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the loader's generator for ``epoch`` on ``rank``."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + rank) % 2**63


def run_seed(world_size: int) -> int:
    """The run's seed (``seed_everything`` records it as ``PL_GLOBAL_SEED``, the seed
    Lightning gives its own ``DistributedSampler``); without one, torch's initial seed in one
    process and 0 under DDP, where every rank must draw the same order."""
    seed = os.environ.get("PL_GLOBAL_SEED", "")
    if seed.lstrip("-").isdigit():
        return int(seed)
    return torch.initial_seed() if world_size <= 1 else 0


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, nothing dropped) whose next pass can leave out its
    first samples (:meth:`start_next_pass_at`), and which knows whether a pass is the first
    of its epoch (:meth:`claim_epoch`)."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, epoch: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.epoch = epoch
        self._start = 0
        self._unclaimed = True  # no pass of this epoch has started

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._unclaimed = True
        super().set_epoch(epoch)

    def claim_epoch(self) -> bool:
        """True once per epoch: for the first pass that asks."""
        claimed, self._unclaimed = self._unclaimed, False
        return claimed

    def start_next_pass_at(self, sample: int) -> None:
        self._start = sample

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        indices = list(super().__iter__())
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """torch's ``DataLoader`` whose sampler is an :class:`EpochSampler`, resumable:
    ``state_dict``/``load_state_dict`` for Lightning, and the epoch's pass counted. With any
    other sampler (Lightning's ``overfit_batches`` puts a sequential one) it is a plain one."""

    _batches = 0  # handed out by the epoch's pass (a restored one included)
    _resume_at = 0  # batches the next epoch pass leaves out (set by load_state_dict)

    def __iter__(self):
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler) or not sampler.claim_epoch():
            return super().__iter__()
        skip, self._resume_at = self._resume_at, 0
        sampler.start_next_pass_at(skip * self.batch_size)
        if self.generator is not None:  # workers' seeds (and MONAI's) come from it
            self.generator.manual_seed(pass_seed(sampler.seed, sampler.epoch, sampler.rank))
        self._batches = skip
        return self._counted(super().__iter__())

    def _counted(self, batches):
        for batch in batches:
            self._batches += 1
            yield batch

    def state_dict(self) -> dict:
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):
            return {}
        return {"seed": sampler.seed, "epoch": sampler.epoch, "batches": self._batches}

    def load_state_dict(self, state: dict) -> None:
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler) or not state:
            return
        sampler.seed = int(state["seed"])
        sampler.epoch = int(state["epoch"])
        sampler._unclaimed = True
        self._resume_at = int(state["batches"])
