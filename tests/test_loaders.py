"""Loaders that size themselves: the worker count from the machine's usable cores, pinned
memory on CUDA."""

import argparse
import os
from types import SimpleNamespace

import pytest
from cnnsuite.tasks.recognition2d.datamodule import RecognitionDataModule
from conftest import task_config
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

from cnnsuite.cli import main
from cnnsuite.data.datamodule import auto_workers
from cnnsuite.errors import ConfigError
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
