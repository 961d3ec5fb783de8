"""Run folders that survive long runs: one ``version_N`` per run, reused on resume, logs
appended, checkpoints written atomically.

- **One folder per run.** A run's ``version_N`` is decided once, in the first process, and
  handed to every process of the run through the environment (Lightning's DDP launcher
  starts the other ranks as copies of this command; ``torchrun`` ranks agree through rank 0
  as well, see :func:`run_version`). Resuming from a checkpoint of ``<root>/version_N`` goes
  on in ``version_N``.
- **Nothing is deleted.** Lightning's CSV logger deletes ``metrics.csv`` when its folder is
  not empty; :class:`AppendingCSVLogger` appends to it, each row on disk as soon as it is
  logged, and a row that a resumed run logs again (what the killed run did after its last
  checkpoint is done again) takes the place of the first instead of doubling it. The config
  of a resumed run is saved beside the first one (``config.resume-1.yaml``, ...), never over it.
- **A recent checkpoint.** :class:`LastCheckpoint` writes ``last.ckpt`` after every epoch and
  every N training steps (Lightning's own ``save_last`` now writes it only when a best
  checkpoint was saved at the same step, or when training ends), never between a step and
  the validation or epoch end that follows it: a kill at any moment resumes into the run that
  was not killed (the training loader resumes too, :mod:`cnnsuite.data.resumable`).
- **Atomic checkpoints.** :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file
  in the same folder, fsyncs it and renames it over the old one: a kill during the write
  leaves the previous ``last.ckpt`` whole.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ..atomic import make_temporary
from ..errors import ConfigError

#: the environment variable that carries a run's version to its other processes
VERSION_ENV = "CNNSUITE_RUN_VERSION"
_VERSION_DIR = re.compile(r"version_(\d+)$")


def resumed_version(root: Path, ckpt_path: str | os.PathLike | None) -> int | None:
    """N when ``ckpt_path`` is a checkpoint of ``<root>/version_N`` (the run goes on there)."""
    if not ckpt_path:
        return None
    run_dir = Path(ckpt_path).resolve().parent.parent
    match = _VERSION_DIR.match(run_dir.name)
    if match and run_dir.parent == Path(root).resolve():
        return int(match[1])
    return None


def next_version(root: Path) -> int:
    """One more than the highest ``version_N`` under ``root`` (0 for none)."""
    root = Path(root)
    found = [int(m[1]) for d in root.iterdir() if (m := _VERSION_DIR.match(d.name))] if root.is_dir() else []
    return max(found, default=-1) + 1


def newest_last_checkpoint(root: Path) -> Path | None:
    """``<root>/version_N/checkpoints/last.ckpt`` of the highest N that has one."""
    found = sorted(
        (int(m[1]), path)
        for path in Path(root).glob("version_*/checkpoints/last.ckpt")
        if (m := _VERSION_DIR.match(path.parent.parent.name))
    )
    return found[-1][1] if found else None


def run_version(root: Path, ckpt_path: str | os.PathLike | None) -> int:
    """The version of this run, the same in every process of it: the resumed run's, else the
    next free one, decided by the first process and inherited by the ranks Lightning's DDP
    launcher starts (through :data:`VERSION_ENV`). Under ``torchrun`` every rank starts at
    once, before any folder exists, and finds the same next free version; should a late rank
    find another, Lightning broadcasts rank 0's log folder to all and only rank 0 writes."""
    resumed = resumed_version(root, ckpt_path)
    launched_rank = os.environ.get("LOCAL_RANK", "0") != "0"  # a rank started by a launcher
    if resumed is not None:
        version = resumed
    elif launched_rank and os.environ.get(VERSION_ENV, "").isdigit():
        version = int(os.environ[VERSION_ENV])
    else:
        version = next_version(root)
    os.environ[VERSION_ENV] = str(version)
    return version


def run_folder(ckpt_path: str | Path) -> Path | None:
    """The run folder of a checkpoint in a run's ``checkpoints/`` folder; None for one elsewhere
    (a file in ~/Downloads has no run folder: its parent's parent is not read or written as one)."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else None


def default_output(ckpt_path: str | Path, name: str) -> Path:
    """``<run folder>/<name>`` for a checkpoint in a run's ``checkpoints/`` folder, else ``./<name>``."""
    run = run_folder(ckpt_path)
    return run / name if run is not None else Path(name)


#: written into an output folder as its command starts, naming the command's ``marker``: a
#: command stopped before it wrote its marker (Ctrl-C, a file that does not read) leaves a
#: folder it may write again
STAMP = ".cnnsuite-output"


def output_folder(out_dir: Path, given: bool, marker: str | None = None) -> Path:
    """``out_dir``, made where missing, for a command that writes its files into it in place.
    Writing in place writes where a symbolic link leads, and a run folder shared with its
    checkpoint could link ``evaluation/report.md`` to ``~/.bashrc``: so no entry of the folder
    may be a link, nor the folder itself where the command chose it (``given``: the user named
    it with ``--out``). The folder's own entries are looked at, not the trees below them.

    A folder the user named that holds anything must be one the command wrote before (the
    :data:`STAMP` it leaves as it starts names its ``marker``): it would replace a ``report.md``
    or ``predictions.jsonl`` of the user's own without a word. A file of the marker's name is no
    sign: ``summary.json`` or ``metrics.json`` may well be the user's own."""
    if out_dir.exists() and not out_dir.is_dir():  # else mkdir's "[Errno 17] File exists"
        raise ConfigError(f"--out {out_dir}: is a file; expected a folder")
    links = [out_dir] if not given and out_dir.is_symlink() else []
    entries = sorted(out_dir.iterdir()) if out_dir.is_dir() else []
    links += [entry for entry in entries if entry.is_symlink()]
    if links:
        raise ConfigError(
            f"{links[0]}: a symbolic link where this command writes its output, which would go where the link "
            "leads; remove the link, or give another --out"
        )
    if given and marker is not None and entries and not _wrote(out_dir, marker):
        shown = ", ".join(entry.name for entry in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(
            f"--out {out_dir}: holds files this command did not write ({shown}), which it could replace; "
            f"give a new or empty folder, or one it wrote before (with its {STAMP} naming {marker})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if marker is not None:
        (out_dir / STAMP).write_text(marker + "\n")
    return out_dir


def _wrote(out_dir: Path, marker: str) -> bool:
    """Whether the command of ``marker`` wrote ``out_dir``: its stamp there names it."""
    stamp = out_dir / STAMP
    return stamp.is_file() and stamp.read_text().strip() == marker


def default_loggers(root: str | os.PathLike, version: int) -> list:
    """TensorBoard and CSV loggers sharing ``<root>/version_<version>``."""
    return [
        TensorBoardLogger(save_dir=root, name="", version=version, default_hp_metric=False),
        AppendingCSVLogger(save_dir=root, name="", version=version),
    ]


def row_identity(row: dict) -> tuple:
    """What makes a ``metrics.csv`` row the same row when a resumed run logs it again: its
    epoch, its step and the columns it fills (values from the file are strings, logged ones
    numbers)."""

    def number(value):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return value
        return int(value) if value.is_integer() else value

    cells = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
    return number(cells.pop("epoch", None)), number(cells.pop("step", None)), frozenset(cells)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, made for runs that are killed and resumed.

    - An existing ``metrics.csv`` is continued, not deleted: its header is read so that new
      rows go below the old ones.
    - Every row is on disk when it has been logged (Lightning's writer keeps rows in memory
      until a flush, which some callers never ask for: a kill lost them).
    - A row that a resumed run logs again replaces the one written before the kill instead of
      doubling it: a resumed run goes on from its last checkpoint, and what the killed run did
      after that checkpoint (a validation, an epoch's end) is done and logged again.
    - A rewrite (a new column, a replaced row) goes to a temporary file renamed over the
      old one, and a line cut short by a kill is dropped when the file is next opened: a kill
      at any moment leaves every complete row.
    """

    def _check_log_dir_exists(self) -> None:
        #: identity → index of each row found in the file: rows a resumed run may log again
        self._earlier: dict[tuple, int] = {}
        if self._fs.isfile(self._tmp_path):  # of a rewrite killed before its rename: the file is whole
            self._fs.rm_file(self._tmp_path)
        if not self._fs.isfile(self.metrics_file_path):
            return
        text = self._read()
        if text and not text.endswith("\n"):  # the last line of a killed write
            self._replace_file(text[: text.rfind("\n") + 1])
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            self.metrics_keys = list(reader.fieldnames or [])
            for index, row in enumerate(reader):
                self._earlier.setdefault(row_identity(row), index)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        self.save()

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        rows, self.metrics = self.metrics, []
        replacing = {}
        for row in rows:
            index = self._earlier.pop(row_identity(row), None)
            if index is not None:
                replacing[index] = row
        exists = self._fs.isfile(self.metrics_file_path)
        if exists and not new_keys and not replacing:
            with self._fs.open(self.metrics_file_path, "a", newline="") as file:
                csv.DictWriter(file, fieldnames=self.metrics_keys).writerows(rows)
            return
        old = []
        if exists:
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                old = list(csv.DictReader(file))
        placed = {id(row) for row in replacing.values()}
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(replacing.get(index, row) for index, row in enumerate(old))
        writer.writerows(row for row in rows if id(row) not in placed)
        self._replace_file(out.getvalue())

    def _read(self) -> str:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            return file.read()

    @property
    def _tmp_path(self) -> str:
        return f"{self.metrics_file_path}.tmp"

    def _replace_file(self, text: str) -> None:
        """``metrics.csv`` becomes ``text`` at once: written beside it, then renamed over it."""
        with self._fs.open(self._tmp_path, "w", newline="") as file:
            file.write(text)
        self._fs.mv(self._tmp_path, self.metrics_file_path)


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` that continues the ``metrics.csv`` of a resumed run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class RunConfig(SaveConfigCallback):
    """Saves the config as ``config.yaml``; a resumed run's as ``config.resume-1.yaml`` (then
    ``-2``, ...) beside it, so the config that started the run is never overwritten."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        log_dir = trainer.log_dir  # a collective call: every rank asks
        taken = Path(log_dir, self.config_filename).is_file() if trainer.is_global_zero else False
        if trainer.strategy.broadcast(taken) and not self.already_saved:
            count = 1
            while Path(log_dir, f"config.resume-{count}.yaml").is_file():
                count += 1
            self.config_filename = trainer.strategy.broadcast(f"config.resume-{count}.yaml")
        super().setup(trainer, pl_module, stage)


def restored_in_place(state: dict, dirpath: str | None, file: str) -> dict:
    """A ``ModelCheckpoint`` state as this run restores it: in this run's checkpoint folder,
    with its one file, ``file``, wherever the checkpoint was written. Lightning reloads a best
    score only when the stored absolute ``dirpath`` is the current one, so a run whose folder
    was moved or copied (another disk, a cluster's scratch) lost it, and a worse epoch replaced
    ``best.ckpt``. And a checkpoint is untrusted input: Lightning removes the paths it stores as
    the previous best or last file, checking only that they lie under ``dirpath`` as written
    (``..`` unresolved). The best score is carried only where its file is (a run resumed into
    a new folder must write its own ``best.ckpt``, else its evaluation finds none), and only a
    finite number (a NaN or a string from a hand-made file would break or freeze the comparison)."""
    if dirpath is None:
        return state
    scores = list((state.get("best_k_models") or {}).values())[:1]
    if not Path(file).is_file() or not all(
        isinstance(s, torch.Tensor) and s.numel() == 1 and bool(torch.isfinite(s).all()) for s in scores
    ):
        scores = []
    paths = {"best_model_path": file, "kth_best_model_path": file} if scores else {}
    moved = {**state, "dirpath": dirpath, "best_model_path": "", "kth_best_model_path": "", **paths}
    moved["best_k_models"] = {file: scores[0]} if scores else {}
    if not scores:
        moved["best_model_score"] = None
    moved["last_model_path"] = file if state.get("last_model_path") else ""
    return moved


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: Lightning's ``ModelCheckpoint``, except that an epoch scoring as well as
    the best so far replaces it. On a small validation split the score saturates early (180
    digits: one image is 0.0056 of accuracy) and the first epoch to reach it is the least
    trained of those that tie; the latest has the same score and more training behind it. Its
    state keeps ``ModelCheckpoint``'s key, so a run written before resumes with its best score."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict) -> None:
        best = self.format_checkpoint_name({}) if self.dirpath is not None else ""
        super().load_state_dict(restored_in_place(state_dict, self.dirpath, best))

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        if super().check_monitor_top_k(trainer, current):
            return True
        if current is None or self.save_top_k != 1 or not self.best_k_models:
            return False
        ties = bool(current == self.best_k_models[self.kth_best_model_path])
        return trainer.strategy.reduce_boolean_decision(ties)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` (beside ``best.ckpt``) at the end of every training epoch, after the best
    checkpoint has taken that epoch's score, and every ``every_n_train_steps`` steps (0: only
    per epoch), so a run killed in the middle of a long epoch loses at most that many steps.
    No step checkpoint is taken after a batch that validation or the epoch's end follows
    (Lightning would resume from it past them); a kill there resumes from the checkpoint
    before, and the batch is trained again. A run stopped inside an epoch (``max_time``, a
    callback setting ``should_stop``) is saved after its last batch, and again after the
    validation Lightning may run at the stop, never at the epoch's end, which Lightning runs
    all the same and would have it resume past the rest of the epoch. A ``ModelCheckpoint``
    subclass: Lightning runs it after the other callbacks and restores its state on resume."""

    def __init__(self, every_n_train_steps: int = 200) -> None:
        if every_n_train_steps < 0:
            raise ConfigError(f"last_checkpoint.every_n_train_steps={every_n_train_steps}: expected 0 or more")
        super().__init__(save_top_k=0, save_last=True, enable_version_counter=False)
        self.every_steps = every_n_train_steps

    def load_state_dict(self, state_dict: dict) -> None:
        last = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION) if self.dirpath else ""
        super().load_state_dict(restored_in_place(state_dict, self.dirpath, last))

    def _save_last(self, trainer, again: bool = False) -> None:
        """Save ``last.ckpt``, unless this step's is saved already (``again``: save it anyway)."""
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if again or self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._cut_short(trainer):
            self._save_last(trainer)
        elif self.every_steps and trainer.global_step % self.every_steps == 0 and not self._epoch_part_ends(trainer):
            self._save_last(trainer)

    @staticmethod
    def _cut_short(trainer) -> bool:
        """Whether the run stops inside this epoch, before its last batch."""
        return trainer.should_stop and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch

    @staticmethod
    def _epoch_part_ends(trainer) -> bool:
        """Whether validation or the epoch's end follows this batch. A checkpoint taken here
        would resume past them: Lightning restarts after the batch and counts that
        validation (and, after an epoch's last batch, the epoch) as done. The checkpoint
        before it resumes into them exactly, and the epoch's own comes after them."""
        loop = trainer.fit_loop.epoch_loop
        if trainer.should_stop:
            return True
        try:
            return loop._is_training_done or loop._should_check_val_fx(trainer.fit_loop._data_fetcher)
        except AttributeError:  # another Lightning: its public flag at least
            return loop.batch_progress.is_last_batch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._cut_short(trainer):
            self._save_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        """Validation inside an epoch (``val_check_interval`` < 1) writes nothing of its own,
        but the one Lightning runs where a run stops inside an epoch may have made a new best:
        saved again, the checkpoint carries it."""
        if not trainer.sanity_checking and self._cut_short(trainer):
            self._save_last(trainer, again=True)

    def on_train_end(self, trainer, pl_module) -> None:
        """The last epoch's checkpoint is the final one."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all: a temporary file in the same folder, flushed
    to disk, then renamed over the target (a rename within a folder is atomic on POSIX)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # of a writer killed mid-write
            leftover.unlink(missing_ok=True)
        tmp = make_temporary(path.parent, f".{path.name}.", ".tmp")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself reaches the disk
        finally:
            os.close(directory)
