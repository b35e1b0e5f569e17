"""``ensemble-lab study``: a grid of runs (methods × seeds), fit + test each, resumable, then the report.

A study file (YAML) names the grid::

    out: studies/digits                # default output directory (relative to the current one)
    seeds: [42, 69, 123]
    args: [--trainer.max_epochs=15]    # CLI-style overrides for every run (optional)
    connectivity: false                # or true, or {points: 11, set: digits}: after its test, each run
                                       # runs `ensemble-lab connectivity` (a method may override it)
    report: [--digits, 3]              # extra arguments of the closing `ensemble-lab report` (optional)
    slurm: {partition: gpu, time: 720} # --launcher slurm: options of the job arrays (optional)
    methods:                           # name -> base config (+ overrides); the name is a directory
      batch_ensemble:
        config: ../digits/batch_ensemble.yaml   # relative to the study file, else to the current directory
        args: [--model.num_members=4]           # optional
      be_rank2:                                 # a list: a base and a variant on top (repeated --config)
        config: [../digits/batch_ensemble.yaml, ../ablations/digits/rank2.yaml]
      be_distilled:                             # trains against deep_ensemble's run of the same seed,
        config: ../digits/batch_ensemble.yaml   # after it (--model.distillation.teacher=<its last.ckpt>)
        teacher: deep_ensemble

Run ``<method>`` with seed ``s`` lives in ``<out>/<method>/seed_<s>/`` (TensorBoard logs,
config.yaml, checkpoints/last.ckpt, results.json, figures/, study.log for a run in its own process,
and study_run.json: the fit arguments the study used and the run's state: running, failed and why).
Every step's options are first checked (study/checks.py): each run's fit arguments with the CLI's
parser, its connectivity step's and the closing report's with theirs. The launcher (``--launcher``) runs
them in this process one after the other, in N local processes at a time, or as SLURM job arrays
(``ensemble_lab.study.launchers``); whichever it is, a run with results.json (and connectivity.json,
if asked for) is skipped; one with checkpoints/last.ckpt but no results.json was interrupted and is
resumed from that checkpoint (config.yaml is kept, the resume's config goes to config.resume-N.yaml).
A finished or interrupted run recorded with other arguments stops the study before anything runs,
unless --rerun_changed moves it to ``<run>.prev-N`` and runs it afresh; a student's record also
keeps what its teachers were made with and the teacher checkpoint it learnt from, so a teacher
changed or trained again changes its students too. Teachers run before their
students; a failed run (and the students of a failed teacher) is reported with its log and the
others still run; Ctrl-C stops the study (status 130). The study ends by printing (and writing
``<out>/report.*``) the report of its runs.
"""

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble_lab.config.lightning_cli import check_arguments
from ensemble_lab.config.run_config import comparable, differences, flatten
from ensemble_lab.errors import ConfigError, EnsembleLabError
from ensemble_lab.io import first_free_number, load_yaml_file
from ensemble_lab.runs.legacy_keys import translate_argv, translate_flat
from ensemble_lab.study.args import Connectivity, connectivity_step, describe_change, teachers_first

STUDY_KEYS = {"out", "seeds", "args", "methods", "connectivity", "report", "slurm"}
METHOD_KEYS = {"config", "args", "teacher", "connectivity"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
#: the option a student's teacher checkpoint is given in (fit_args) and recorded under
TEACHER_KEY = "model.init_args.distillation.teacher"
RECORD = "study_run.json"  # in each run directory: {"argv": the fit arguments the study last used, "config", "state", ...}


@dataclass(frozen=True)
class Run:
    """One cell of the grid: method ``name`` (a directory name) with ``seed``."""

    name: str  # the method's key in the study file, a directory name
    seed: int  # passed as --seed_everything
    configs: tuple[Path, ...]  # config files (resolved), later ones overriding earlier ones
    overrides: tuple[str, ...]  # the study's args, then the method's args
    run_dir: Path  # <out>/<name>/seed_<seed>
    teacher: str | None = None  # another method of the study: this run trains against its run of the same seed
    connectivity: Connectivity | None = None  # the connectivity step after the test, if asked for
    #: the teacher's run of the same seed (it has its own upstream): its inputs are part of this run's inputs
    upstream: "Run | None" = field(default=None, compare=False, repr=False)

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
        return [] if self.teacher_dir is None else [f"--model.distillation.teacher={self.teacher_dir / 'checkpoints' / 'last.ckpt'}"]

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
        return args + ["--points", str(self.connectivity.points)] + (["--set", self.connectivity.set] if self.connectivity.set else [])

    def resolved(self) -> dict[str, Any]:
        """The run's resolved configuration today (config files read, defaults filled in), as flat comparable keys."""
        return _resolved(tuple(self.fit_args(resume=False)))

    def teacher_checkpoint(self) -> str | None:
        """The sha256 of the teacher's last.ckpt (what this run learns from); None without a teacher or checkpoint."""
        return None if self.teacher_dir is None else checkpoint_digest(self.teacher_dir / "checkpoints" / "last.ckpt")

    def _teacher_change(self, record: dict[str, Any]) -> list[str]:
        """Whether the teacher was (or is to be) made again since this run learnt from it."""
        if self.teacher_dir is None:
            return []
        if not (self.teacher_dir / "results.json").exists():  # it trains (again) before this run: other weights
            return [f"teacher {self.teacher} seed {self.seed} has no finished run ({self.teacher_dir}), so it is trained again first"]
        recorded = record.get("teacher_checkpoint")
        if recorded is not None and recorded != self.teacher_checkpoint():
            return [f"teacher {self.teacher} seed {self.seed} was trained again since (its last.ckpt is not the one this run learnt from)"]
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
        teacher = flat.get(TEACHER_KEY)
        if self.teacher is None or not isinstance(teacher, str):
            return flat
        return {**flat, TEACHER_KEY: str(Path(*Path(teacher).parts[-4:]))}  # <teacher>/seed_<s>/checkpoints/last.ckpt

    def state(self) -> str:
        """``status()``, or "changed" for a finished or interrupted run made with other arguments."""
        status = self.status()
        return "changed" if status != "new" and self.change() is not None else status


@dataclass(frozen=True)
class Study:
    """A study file read: its runs (teachers before their students) and its study-level options."""

    runs: tuple[Run, ...]
    out: Path  # the study directory
    report_args: tuple[str, ...] = ()  # extra arguments of the closing report
    slurm: dict[str, Any] = field(default_factory=dict)  # the file's `slurm:` mapping


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


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(f"{where} must be a list of CLI-style arguments such as [--trainer.max_epochs=5], got {value!r}")
    return tuple(str(v) for v in value)


def _resolve_configs(raw: Any, study_file: Path, where: str) -> tuple[Path, ...]:
    """A config path, or a list of them (a base and the variants on top, as repeated ``--config``)."""
    paths = raw if isinstance(raw, list) and raw else [raw]
    return tuple(_resolve_config(path, study_file, where) for path in paths)


def _resolve_config(raw: Any, study_file: Path, where: str) -> Path:
    if not isinstance(raw, str):
        raise ConfigError(f"{where} must be the path of a config file or a list of them, got {raw!r}")
    path = Path(raw).expanduser()
    candidates = [path] if path.is_absolute() else [study_file.parent / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{where}: config {raw!r} not found (looked at {', '.join(str(c) for c in candidates)})")


def load_spec(study_file: Path, out: Path | None = None) -> Study:
    """Read a study file: its runs, method by method (teachers first), seed by seed, and its options.

    Args:
        study_file: the study YAML (see the module docstring).
        out: output directory; None uses the file's ``out`` or ``studies/<file stem>``.
    """
    study_file = Path(study_file)
    if not study_file.is_file():
        raise ConfigError(f"study file {study_file} not found")
    spec = load_yaml_file(study_file, "study file")  # not YAML, a key given twice: one line naming file and line
    if not isinstance(spec, dict) or not isinstance(spec.get("methods"), dict) or not spec["methods"]:
        raise ConfigError(f"{study_file} needs a 'methods' mapping: name -> {{config: path, args: [...]}}")
    if unknown := set(spec) - STUDY_KEYS:
        raise ConfigError(f"{study_file}: unknown keys {sorted(unknown)}; allowed: {sorted(STUDY_KEYS)}")
    seeds = spec.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{study_file}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) < len(seeds):  # two runs would share one directory
        raise ConfigError(f"{study_file}: 'seeds' lists {sorted({s for s in seeds if seeds.count(s) > 1})} more than once")
    if not isinstance(spec.get("slurm") or {}, dict):
        raise ConfigError(f"{study_file}: 'slurm' must be a mapping of SLURM options, e.g. {{partition: gpu, time: 720}}")
    common = _string_list(spec.get("args"), f"{study_file}: 'args'")
    out = Path(out if out is not None else spec.get("out") or Path("studies") / study_file.stem).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{study_file}: the study directory {out} is a file; give another 'out' (or --out DIR)")
    methods: dict[str, dict[str, Any]] = {}
    for name, method in spec["methods"].items():
        where = f"{study_file}: methods.{name}"
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or set(name) == {"."}:  # "..": outside the study
            raise ConfigError(f"{where}: a method name is a directory name (letters, digits, _ . -), got {name!r}")
        if not isinstance(method, dict) or (unknown := set(method) - METHOD_KEYS):
            raise ConfigError(f"{where} must be a mapping with keys {sorted(METHOD_KEYS)}, got {method!r}")
        if not isinstance(method.get("teacher"), (str, type(None))):
            raise ConfigError(f"{where}.teacher must be the name of another method of this study, got {method['teacher']!r}")
        methods[name] = method
    study_connectivity = connectivity_step(spec.get("connectivity"), f"{study_file}: 'connectivity'")
    runs: list[Run] = []
    for name in teachers_first(list(methods), {n: m.get("teacher") for n, m in methods.items()}, study_file):
        method, where = methods[name], f"{study_file}: methods.{name}"
        configs = _resolve_configs(method.get("config"), study_file, f"{where}.config")
        overrides = common + _string_list(method.get("args"), f"{where}.args")
        step = connectivity_step(method["connectivity"], f"{where}.connectivity") if "connectivity" in method else study_connectivity
        teacher = method.get("teacher")
        upstream = {run.seed: run for run in runs if run.name == teacher}  # teachers come first
        runs += [Run(name, seed, configs, overrides, out / name / f"seed_{seed}", teacher, step, upstream.get(seed)) for seed in seeds]
    report_args = _string_list(spec.get("report"), f"{study_file}: 'report'")
    return Study(tuple(runs), out, report_args, dict(spec.get("slurm") or {}))


def load_study(study_file: Path, out: Path | None = None) -> list[Run]:
    """The runs of a study file (``load_spec(...).runs``), teachers before their students."""
    return list(load_spec(study_file, out).runs)


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
