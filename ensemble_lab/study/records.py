"""A study's runs and their records: where a run lives, the arguments it is fitted with, what it has
(done, to resume, new) and whether it was made with other arguments than the study gives today (``changed``:
its resolved configuration, its teachers' and the teacher checkpoint it learnt from, compared with today's;
``study_run.json`` in each run directory holds what it was made with)."""

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble_lab.config.lightning_cli import check_arguments
from ensemble_lab.config.run_config import comparable, differences, flatten
from ensemble_lab.errors import EnsembleLabError
from ensemble_lab.io import first_free_number
from ensemble_lab.runs.callbacks import SPAWN_CHECKPOINT
from ensemble_lab.runs.legacy_keys import translate_argv, translate_flat
from ensemble_lab.study.args import Connectivity, describe_change

#: the option a student's teacher checkpoint is given in (fit_args) and recorded under
TEACHER_KEY = "model.init_args.distillation.teacher"
#: the option a spawned run's parent checkpoint is given in
SPAWN_KEY = "model.init_args.spawn_from"
RECORD = "study_run.json"  # in each run directory: {"argv": the fit arguments the study last used, "config", "state", ...}


@dataclass(frozen=True)
class Run:
    """One cell of the grid: method ``name`` (a directory name) with ``seed``."""

    name: str  # the method's key in the study file, a directory name
    seed: int  # passed as --seed_everything
    configs: tuple[Path, ...]  # config files (resolved), later ones overriding earlier ones
    overrides: tuple[str, ...]  # the study's args, then the method's args
    run_dir: Path  # <out>/<name>/seed_<seed>
    #: another method of the study: this run trains against its run of the same seed (with ``spawn_epoch``: starts
    #: from that run's checkpoint after epoch spawn_epoch, its spawn parent)
    teacher: str | None = None
    connectivity: Connectivity | None = None  # the connectivity step after the test, if asked for
    #: the teacher's run of the same seed (it has its own upstream): its inputs are part of this run's inputs
    upstream: "Run | None" = field(default=None, compare=False, repr=False)
    spawn_epoch: int | None = None  # a spawned run: the epoch of its parent (``teacher``) it starts from; 0: no parent

    @property
    def role(self) -> str:
        """What ``teacher`` is to this run: "teacher", or "spawn parent"."""
        return "spawn parent" if self.spawn_epoch else "teacher"

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}"

    @property
    def last_ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def record(self) -> Path:
        """``study_run.json``: the fit arguments the study last ran this run with, and its state."""
        return self.run_dir / RECORD

    @property
    def teacher_dir(self) -> Path | None:
        """The run directory of this run's teacher (same seed), if it has one."""
        return None if self.teacher is None else self.run_dir.parent.parent / self.teacher / self.run_dir.name

    def status(self) -> str:
        """What the run has: "done" (results.json, and connectivity.json if asked for), "connectivity" (results.json
        only: the connectivity step is missing), "resume" (last.ckpt but no results.json) or "new"."""
        if (self.run_dir / "results.json").exists():
            return "connectivity" if self.connectivity and not (self.run_dir / "connectivity.json").exists() else "done"
        return "resume" if self.last_ckpt.exists() else "new"

    def _teacher_args(self) -> list[str]:
        if self.teacher_dir is None:
            return []
        if self.spawn_epoch:
            return [f"--model.spawn_from={self.source_checkpoint}"]
        return [f"--model.distillation.teacher={self.source_checkpoint}"]

    @property
    def source_checkpoint(self) -> Path | None:
        """The checkpoint of ``teacher``'s run this run learns from (its last.ckpt) or spawns from (spawn-epoch=<t>.ckpt)."""
        if self.teacher_dir is None:
            return None
        name = SPAWN_CHECKPOINT.format(epoch=self.spawn_epoch) if self.spawn_epoch else "last.ckpt"
        return self.teacher_dir / "checkpoints" / name

    def fit_args(self, resume: bool) -> list[str]:
        """Arguments of ``ensemble-lab`` for this run; the study's own options come last and win.

        The logger names the run directory (``<out>/<name>/seed_<s>``) and checkpoints go to Lightning's
        default ``<run>/checkpoints`` (dirpath null): a resume then continues in the run directory the way
        ``ensemble-lab fit --ckpt_path`` does, keeping config.yaml and adding config.resume-N.yaml. A student's
        ``--model.distillation.teacher`` is only read when its fit starts, so its arguments parse before the teacher has run.
        """
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(self.run_dir.parent.parent), "name": self.run_dir.parent.name, "version": self.run_dir.name},
        }
        configs = [arg for path in self.configs for arg in ("--config", str(path))]
        args = ["fit", *configs, *self.overrides, *self._teacher_args()]
        args += [f"--seed_everything={self.seed}", f"--run_name={self.name}"]
        args += [f"--trainer.logger={json.dumps(logger)}", "--checkpoint.dirpath=null"]
        return args + ([f"--ckpt_path={self.last_ckpt}"] if resume else [])

    def connectivity_args(self) -> list[str]:
        """Arguments of ``ensemble-lab`` for this run's connectivity step (empty if none is asked for)."""
        if self.connectivity is None:
            return []
        args = ["connectivity", "--config", str(self.run_dir / "config.yaml"), "--ckpt_path", str(self.last_ckpt)]
        args += ["--points", str(self.connectivity.points)] + (["--set", self.connectivity.set] if self.connectivity.set else [])
        args += ["--align", self.connectivity.align] if self.connectivity.align != "none" else []
        return args + (["--repair", "true"] if self.connectivity.repair else [])

    def resolved(self) -> dict[str, Any]:
        """The run's resolved configuration today (config files read, defaults filled in), as flat comparable keys."""
        return _resolved(tuple(self.fit_args(resume=False)))

    def teacher_checkpoint(self) -> str | None:
        """The sha256 of the teacher's last.ckpt (what this run learns from); None without a teacher or checkpoint."""
        return None if self.source_checkpoint is None else checkpoint_digest(self.source_checkpoint)

    def _teacher_change(self, record: dict[str, Any]) -> list[str]:
        """Whether the teacher was (or is to be) made again since this run learnt from it."""
        if self.teacher_dir is None:
            return []
        if not (self.teacher_dir / "results.json").exists():  # it trains (again) before this run: other weights
            return [f"{self.role} {self.teacher} seed {self.seed} has no finished run ({self.teacher_dir}), so it is trained again first"]
        recorded = record.get("teacher_checkpoint")
        if recorded is not None and recorded != self.teacher_checkpoint():
            return [f"{self.role} {self.teacher} seed {self.seed} was trained again since (its checkpoint is not the one this run started from)"]
        return []

    def lineage(self) -> list[dict[str, Any]]:
        """The inputs this run learns from beyond its own: its teacher's {"name", "config"} (the teacher's
        resolved configuration, as compared), then the teacher's teacher's, and so on; [] without a teacher."""
        chain, teacher = [], self.upstream
        while teacher is not None:
            chain.append({"name": teacher.name, "config": teacher._within_study(teacher.resolved())})
            teacher = teacher.upstream
        return chain

    def _lineage_change(self, recorded: Any) -> list[str]:
        """How the recorded teachers' configurations differ from today's, each line naming the teacher."""
        today = self.lineage()
        if not isinstance(recorded, list) or not all(isinstance(t, dict) and isinstance(t.get("config"), dict) for t in recorded):
            return [f"{RECORD}: 'teachers' unreadable"]
        parts = []
        for depth, (before, now) in enumerate(zip(recorded, today)):
            whose = "teacher " * (depth + 1)  # "teacher teacher t": the teacher of its teacher
            parts += [f"{whose}{now['name']}: {change}" for change in differences(translate_flat(before["config"]), now["config"])]
        if len(recorded) != len(today):  # the chain grew or shrank above the first teacher
            parts.append(f"teachers: {' <- '.join(t.get('name', '?') for t in recorded) or 'none'} -> {' <- '.join(t['name'] for t in today) or 'none'}")
        return parts

    def change(self) -> str | None:
        """What differs between the recorded run and today's; None if they match or nothing is recorded.

        The resolved configurations are compared, so an edit inside a method's config file counts; so are
        its teachers' (a student trained against a teacher made with other arguments is changed with it).
        A record from before the study kept configurations is compared by its arguments, one from before it
        kept the teachers' by its own configuration only.
        """
        if not self.record.exists():  # a run made before the study recorded its arguments: taken as matching
            return None
        try:
            record = json.loads(self.record.read_text())
            recorded, config = record["argv"], record.get("config")
            if not isinstance(recorded, list) or not isinstance(config, (dict, type(None))):
                raise TypeError("argv is not a list, or config not a mapping")
            recorded = translate_argv(recorded)[0]  # older flags in today's spelling
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return f"{RECORD} unreadable ({error})"
        if config is None:
            own = describe_change(recorded, translate_argv(self.fit_args(resume=False))[0])
            parts = [own] if own else []
        else:
            before, today = comparable(translate_flat(config)), self.resolved()  # older option names: today's
            if new_keys := set(today) - set(before):  # options added since the run: what its arguments give today
                before = {**_resolved_or_empty(recorded, new_keys), **before}
            parts = differences(self._within_study(before), self._within_study(today))
        parts += self._lineage_change(record["teachers"]) if "teachers" in record else []
        return "; ".join(parts + self._teacher_change(record)) or None

    def _within_study(self, flat: dict[str, Any]) -> dict[str, Any]:
        """``flat`` with the study's own teacher checkpoint as a path inside the study (<teacher>/seed_<s>/...),
        so that a study directory moved or reached by another path still matches its students' records."""
        key = SPAWN_KEY if self.spawn_epoch else TEACHER_KEY
        teacher = flat.get(key)
        if self.teacher is None or not isinstance(teacher, str):
            return flat
        return {**flat, key: str(Path(*Path(teacher).parts[-4:]))}  # <teacher>/seed_<s>/checkpoints/last.ckpt

    def state(self) -> str:
        """``status()``, or "changed" for a finished or interrupted run made with other arguments."""
        status = self.status()
        return "changed" if status != "new" and self.change() is not None else status


_RESOLVED: dict[tuple[str, ...], dict[str, Any]] = {}  # fit arguments -> flat comparable configuration, per study command


def _resolved(argv: tuple[str, ...]) -> dict[str, Any]:
    """A run's flat comparable configuration; parsed once per study command (every run is compared several times)."""
    if argv not in _RESOLVED:
        _RESOLVED[argv] = comparable(flatten(check_arguments(argv)))
    return _RESOLVED[argv]


_DIGESTS: dict[tuple[Path, int, int], str] = {}  # (checkpoint, size, mtime) -> sha256, per study command


def checkpoint_digest(path: Path) -> str | None:
    """The sha256 of the file at ``path`` (None if there is none); read once per version of the file in a command."""
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as stream:
            _DIGESTS[key] = hashlib.file_digest(stream, "sha256").hexdigest()
    return _DIGESTS[key]


def _resolved_or_empty(recorded: list[str], keys: set[str]) -> dict[str, Any]:
    """The values of ``keys`` that a run's recorded fit arguments resolve to today; {} if they no longer parse."""
    try:
        resolved = _resolved(tuple(arg for arg in recorded if not arg.startswith("--ckpt_path")))
    except (EnsembleLabError, SystemExit):
        return {}
    return {key: resolved[key] for key in keys if key in resolved}


def forget_resolved() -> None:
    """Parse runs (and read checkpoints) afresh from now on: files may have changed since an earlier study in this process."""
    _RESOLVED.clear()
    _DIGESTS.clear()


def remember_resolved(run: Run, config: dict[str, Any]) -> None:
    """Take ``config`` (``run.resolved()`` as the study computed it) as the run's configuration: a run in a process
    of its own then need not parse its arguments once more before it starts."""
    _RESOLVED[tuple(run.fit_args(resume=False))] = config


def refuse_changed(runs: Sequence[Run]) -> None:
    """Print a line per finished or interrupted run made with other arguments, then raise EnsembleLabError."""
    changed = [run for run in runs if run.state() == "changed"]
    if not changed:
        return
    for run in changed:
        print(f"study: {run.label} ({run.run_dir}) was made with other arguments: {run.change()}", file=sys.stderr)
    raise EnsembleLabError(
        f"{len(changed)} of {len(runs)} runs were made with other arguments (listed above), so their results would "
        "not match the others; nothing was run. Restore the arguments, or pass --rerun_changed to move those runs "
        "aside (<run>.prev-N) and run them afresh."
    )


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to the first free ``<run_dir>.prev-N`` (N = 1, 2, ...) and return the new path."""
    n = first_free_number(lambda k: run_dir.with_name(f"{run_dir.name}.prev-{k}").exists())
    return run_dir.rename(run_dir.with_name(f"{run_dir.name}.prev-{n}"))
