"""``<run>/metrics.csv``: every epoch's logged values in one plain table, readable without TensorBoard.

One row per training epoch: ``epoch`` (0-based), ``step`` (optimizer steps done at its end), then every
epoch-level value the epoch logged, train/ values first (train/loss_epoch, train/acc, val/acc, ..., val/weight_cosine and,
with --eval_sets_every K, val/<set>/<metric> on the epochs that evaluated the test sets). A column that
first appears in a later epoch is added to the header and left blank in the rows without it.
"""

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from ensemble_lab.io import atomic_write_bytes

FILENAME = "metrics.csv"
#: the first columns, in this order; the logged values follow in the order they first appeared
INDEX = ("epoch", "step")


def read_metrics_csv(path: Path) -> list[dict[str, float | int | None]]:
    """The rows of a metrics.csv: ``epoch`` and ``step`` as ints, the other cells as floats, blank cells as None."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k in INDEX else float(v)) if v != "" else None for k, v in row.items()} for row in rows]


class MetricsCSV(Callback):
    """Writes ``metrics.csv`` into the run directory at the end of every training epoch (rank 0, atomically).

    The file is rewritten whole each epoch (a few kB), so it always has one consistent header. Every
    checkpoint holds the rows written so far: a resumed fit (``--ckpt_path last``) starts again from
    exactly those rows, so the rows of epochs after the checkpoint that an interrupted attempt wrote are
    dropped, and every epoch appears once.

    A row is taken when its epoch is complete: when the epoch-end checkpoint is assembled (so that
    checkpoint holds it), else when the next epoch starts or training ends. Its values are those of
    ``trainer.logged_metrics`` logged since the previous row (Lightning keeps every value it ever logged
    there; one logged again is a new object), without per-step values (names ending in ``_step``).
    """

    def __init__(self) -> None:
        """Always added by the CLI; no options."""
        self._rows: list[dict[str, Any]] = []
        self._seen: dict[str, Any] = {}  # the logged_metrics values already in a row (compared by identity)
        self._path: Path | None = None
        self._trainer: L.Trainer | None = None
        self._restored: list[dict[str, Any]] | None = None  # the rows of the checkpoint a fit resumes
        self._first_epoch = 0  # the first epoch this fit trains (a resumed or spawned fit starts later)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: trainer.log_dir is a collective under DDP
        # Lightning's CSVLogger (--trainer.logger CSVLogger) writes its own per-step metrics.csv there: leave it that file
        csv_logger = any(isinstance(logger, CSVLogger) and Path(logger.log_dir) == run_dir for logger in trainer.loggers)
        self._path = None if csv_logger else run_dir / FILENAME
        if csv_logger:
            rank_zero_info(f"ensemble-lab: {run_dir / FILENAME} is the CSVLogger's (one row per logging step), not one row per epoch")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = dict(trainer.logged_metrics)  # only what this fit logs from now on goes into rows
        # resumed: the checkpoint's rows replace whatever the interrupted attempt left; a new fit starts empty
        self._rows, self._restored = self._restored or [], None
        # epochs done before this fit (a spawned run's parent's, an old checkpoint's without rows) logged nothing here
        self._first_epoch = _processed_epochs(trainer)
        self._write(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_row(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_row(trainer)

    def state_dict(self) -> dict[str, Any]:
        if self._trainer is not None:  # an epoch-end checkpoint: its epoch's row goes into it
            self._take_row(self._trainer)
        return {"rows": [dict(row) for row in self._rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = [dict(row) for row in state_dict.get("rows", [])]

    def _take_row(self, trainer: L.Trainer) -> None:
        """Add the row of the last complete epoch, once; write the file."""
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        epoch = _processed_epochs(trainer) - 1  # the last epoch whose batches all ran
        if epoch < self._first_epoch or (self._rows and self._rows[-1]["epoch"] >= epoch):
            return
        logged = dict(trainer.logged_metrics)
        fresh = {k: v for k, v in logged.items() if self._seen.get(k) is not v and not k.endswith("_step") and k not in INDEX}
        self._seen = logged
        self._rows.append({"epoch": epoch, "step": trainer.global_step, **{k: float(v) for k, v in fresh.items()}})
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or self._path is None:
            return
        logged = dict.fromkeys(k for row in self._rows for k in row if k not in INDEX)  # in the order they first appeared
        columns = [*INDEX, *sorted(logged, key=lambda k: not k.startswith("train/"))]  # train/ first (a stable sort)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_bytes(self._path, buffer.getvalue().encode())


def _processed_epochs(trainer: L.Trainer) -> int:
    """How many epochs' batches have all run (the fit loop's tracker counts them; typed as its base class)."""
    return int(getattr(trainer.fit_loop.epoch_progress.current, "processed"))
