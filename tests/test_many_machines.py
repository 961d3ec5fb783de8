"""Many machines: the guide's two-node torchrun line, both nodes simulated on this machine
(a localhost c10d rendezvous, gloo, one CPU process a node), streaming a prepared folder,
ends as one node with two processes does. The guide's command block is what runs: its
torchrun line is parsed and only the per-machine values are substituted; its SLURM lines
must say the same.

Slow (real processes): ``make test-slow``."""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_long_runs import assert_same_weights
from test_multispectral3d import SMALL_MODEL, make_folder

from cnnsuite.cli import main

SECTION = "## Long runs and many processes"


def guide_commands() -> list[list[str]]:
    """The shell lines of the guide's command block on many processes, continuation lines
    joined, each split as the shell would (``#SBATCH`` lines kept, other comments dropped)."""
    text = (ROOT / "docs" / "guide.md").read_text()
    section = text[text.index(SECTION) :]
    block = re.search(r"^```\n(.*?)^```", section, re.S | re.M)[1].replace("\\\n", " ")
    lines = [line for line in block.splitlines() if line.startswith("#SBATCH") or not line.startswith("#")]
    return [shlex.split(line) for line in lines if line.strip()]


def the_line(commands, first: list[str]) -> list[str]:
    found = [c for c in commands if c[: len(first)] == first]
    assert len(found) == 1, f"the guide has {len(found)} lines starting {' '.join(first)}"
    return found[0]


def substitute(args: list[str], values: dict[str, str]) -> list[str]:
    """``args`` with the value after each option of ``values`` replaced (each option there once)."""
    args = list(args)
    for option, value in values.items():
        assert args.count(option) == 1, f"{option} is not once in {shlex.join(args)}"
        args[args.index(option) + 1] = value
    return args


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_guides_slurm_lines_run_the_torchrun_lines_fit():
    commands = guide_commands()
    torchrun = the_line(commands, ["torchrun", "--nnodes"])
    fit = torchrun[torchrun.index("-m") + 1 :]
    srun = the_line(commands, ["srun"])
    assert srun[1:] == [*fit, "--ckpt_path", "last"]  # the same run; a requeued job resumes it
    sbatch = the_line(commands, ["#SBATCH"])
    assert option(sbatch, "--nodes") == option(torchrun, "--nnodes") == option(fit, "--trainer.num_nodes")
    assert option(sbatch, "--ntasks-per-node") == option(torchrun, "--nproc_per_node")
    assert option(sbatch, "--ntasks-per-node") == option(fit, "--trainer.devices")
    assert option(sbatch, "--gres") == f"gpu:{option(fit, '--trainer.devices')}"


def start(command: list[str], log: Path) -> subprocess.Popen:
    """``command`` in a session of its own (torchrun and its workers are killed together),
    its output into ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def wait_all(processes: dict[str, subprocess.Popen], logs: dict, seconds: float) -> None:
    """Every process ends with status 0 within ``seconds``; otherwise every one still running
    is killed and the failure shows each one's last lines."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in processes.values()]
            if all(c == 0 for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.5)
    finally:
        for p in processes.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    codes = {n: p.returncode for n, p in processes.items()}
    if any(codes.values()):
        tails = "\n".join(f"--- {n} (exit {codes[n]}):\n{logs[n].read_text()[-3000:]}" for n in processes)
        pytest.fail(f"not every process ended well: {codes}\n{tails}")


@pytest.mark.slow
def test_two_nodes_of_one_process_end_as_one_node_of_two(tmp_path):
    raw = make_folder(tmp_path / "raw", per_class=8, size=8)
    prepared = tmp_path / "prepared"
    main(["prepare", "--task", "multispectral3d", "--data.data_dir", str(raw), "--out", str(prepared), "--debug"])

    torchrun = the_line(guide_commands(), ["torchrun", "--nnodes"])
    # the placeholders a user fills in per machine
    assert option(torchrun, "--node_rank") == "$NODE_RANK"
    assert option(torchrun, "--rdzv_endpoint") == "$MASTER_ADDR:29500"
    here = {  # this machine plays both nodes: one CPU process each, the rendezvous on loopback
        "--nproc_per_node": "1",
        "--rdzv_endpoint": f"127.0.0.1:{free_port()}",
        "--data.data_dir": str(prepared),
        "--trainer.devices": "1",
    }
    # a tiny run, the same on any machine (no loader workers: auto would differ between the two layouts)
    small = ["--trainer.accelerator", "cpu", "--trainer.max_epochs", "2", "--data.batch_size", "4",
             "--data.num_workers", "0", "--data.augment", "false", *SMALL_MODEL,
             "--trainer.enable_progress_bar", "false", "--data.data_root", str(tmp_path / "data")]  # fmt: skip
    run_on = [sys.executable, "-m", "torch.distributed.run"]  # the venv's torchrun
    two_nodes = [*small, "--trainer.default_root_dir", str(tmp_path / "two_nodes")]
    node = {f"node{rank}": substitute(torchrun[1:], {**here, "--node_rank": str(rank)}) for rank in (0, 1)}
    commands = {name: [*run_on, *args, *two_nodes] for name, args in node.items()}
    # the reference: the same cnnsuite fit on one node of two processes (the same world size and batches)
    one_node = {"--data.data_dir": str(prepared), "--trainer.devices": "2", "--trainer.num_nodes": "1"}
    fit = substitute(torchrun[torchrun.index("-m") :], one_node)
    commands["one_node"] = [*run_on, "--standalone", "--nproc_per_node", "2", *fit, *small,
                            "--trainer.default_root_dir", str(tmp_path / "one_node")]  # fmt: skip
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    processes = {name: start(command, logs[name]) for name, command in commands.items()}
    wait_all(processes, logs, seconds=400)

    runs = {}
    for name in ("two_nodes", "one_node"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["version_0"], name  # one run folder
        runs[name] = tmp_path / name / "version_0"
        assert sorted(p.name for p in (runs[name] / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    members = [re.findall(r"GLOBAL_RANK: (\d), MEMBER: \d/(\d)", logs[n].read_text()) for n in node]
    assert sorted(sum(members, [])) == [("0", "2"), ("1", "2")]  # one process group across the two torchruns
    assert len([log for log in logs.values() if "run folder: " in log.read_text()]) == 2  # one evaluation a run
    two, one = (json.loads((runs[n] / "evaluation" / "metrics.json").read_text()) for n in ("two_nodes", "one_node"))
    assert "test/acc" in two and two == one
    best = runs["two_nodes"] / "checkpoints" / "best.ckpt"
    alone = tmp_path / "alone"
    main(["evaluate", "--ckpt", str(best), "--data.data_dir", str(prepared), "--data.data_root", str(tmp_path / "data"),
          "--out", str(alone), "--debug"])  # fmt: skip
    assert json.loads((alone / "metrics.json").read_text()) == two  # as one process evaluates it
    assert_same_weights(best, runs["one_node"] / "checkpoints" / "best.ckpt")
    assert torch.load(runs["two_nodes"] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] > 0
