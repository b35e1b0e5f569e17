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
      uci_split:                                # "{seed}" in an argument is the run's seed: here each
        config: ../tabular/tabm.yaml            # seed trains and tests on its own UCI split
        args: ["--data.split={seed}"]
      be_distilled:                             # trains against deep_ensemble's run of the same seed,
        config: ../digits/batch_ensemble.yaml   # after it (--model.distillation.teacher=<its last.ckpt>)
        teacher: deep_ensemble
      de_t5:                                    # a spawned Deep Ensemble: every member starts from single's run of
        config: ../digits/deep_ensemble.yaml    # the same seed after epoch 5 (--model.spawn_from=<its
        spawn: {from: single, epoch: 5}         # spawn-epoch=5.ckpt>); single keeps that checkpoint
                                                # (--checkpoint.keep_epochs gets every epoch its children need);
                                                # epoch 0: no parent, the members start apart (the plain Deep Ensemble)

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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble_lab.errors import ConfigError
from ensemble_lab.io import load_yaml_file
from ensemble_lab.study.args import connectivity_step, teachers_first
from ensemble_lab.study.records import Run

STUDY_KEYS = {"out", "seeds", "args", "methods", "connectivity", "report", "slurm"}
METHOD_KEYS = {"config", "args", "teacher", "connectivity", "spawn"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Study:
    """A study file read: its runs (teachers before their students) and its study-level options."""

    runs: tuple[Run, ...]
    out: Path  # the study directory
    report_args: tuple[str, ...] = ()  # extra arguments of the closing report
    slurm: dict[str, Any] = field(default_factory=dict)  # the file's `slurm:` mapping


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(f"{where} must be a list of CLI-style arguments such as [--trainer.max_epochs=5], got {value!r}")
    return tuple(str(v) for v in value)


def with_seed(args: tuple[str, ...], seed: int) -> tuple[str, ...]:
    """``args`` with every ``{seed}`` replaced by the run's seed (e.g. ``--data.split={seed}``: one split per seed)."""
    return tuple(arg.replace("{seed}", str(seed)) for arg in args)


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


def _spawn(raw: Any, where: str) -> tuple[str | None, int | None]:
    """A method's ``spawn: {from: NAME, epoch: T}`` as (parent, T); (None, None) without one."""
    if raw is None:
        return None, None
    if isinstance(raw, dict) and set(raw) == {"from", "epoch"} and isinstance(raw["from"], str):
        epoch = raw["epoch"]
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
            return raw["from"], epoch
    raise ConfigError(f"{where}.spawn must be a mapping {{from: PARENT_METHOD, epoch: T >= 0}}, got {raw!r}")


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
    spawns = {name: _spawn(method.get("spawn"), f"{study_file}: methods.{name}") for name, method in methods.items()}
    depends = {name: method.get("teacher") for name, method in methods.items()}
    keep: dict[str, set[int]] = {}  # parent -> the epochs its children spawn at
    for name, (parent, epoch) in spawns.items():
        if parent is not None and depends[name] is not None:
            raise ConfigError(f"{study_file}: methods.{name} has a teacher and a spawn parent; give it one of them")
        if parent is not None and epoch:
            depends[name] = parent
            keep.setdefault(parent, set()).add(epoch)
    study_connectivity = connectivity_step(spec.get("connectivity"), f"{study_file}: 'connectivity'")
    runs: list[Run] = []
    for parent in {parent for parent, _ in spawns.values() if parent is not None}:
        if parent not in methods:
            raise ConfigError(f"{study_file}: a spawn parent {parent!r} is not a method of this study; choose from {list(methods)}")
    for name in teachers_first(list(methods), depends, study_file):
        method, where = methods[name], f"{study_file}: methods.{name}"
        configs = _resolve_configs(method.get("config"), study_file, f"{where}.config")
        overrides = common + _string_list(method.get("args"), f"{where}.args")
        if name in keep:  # a spawn parent keeps its checkpoint after every epoch a child starts from
            overrides += (f"--checkpoint.keep_epochs=[{','.join(map(str, sorted(keep[name])))}]",)
        step = connectivity_step(method["connectivity"], f"{where}.connectivity") if "connectivity" in method else study_connectivity
        teacher, spawn_epoch = depends[name], spawns[name][1]
        upstream = {run.seed: run for run in runs if run.name == teacher}  # teachers come first
        runs += [
            Run(name, seed, configs, with_seed(overrides, seed), out / name / f"seed_{seed}", teacher, step, upstream.get(seed), spawn_epoch)
            for seed in seeds
        ]
    report_args = _string_list(spec.get("report"), f"{study_file}: 'report'")
    return Study(tuple(runs), out, report_args, dict(spec.get("slurm") or {}))


def load_study(study_file: Path, out: Path | None = None) -> list[Run]:
    """The runs of a study file (``load_spec(...).runs``), teachers before their students."""
    return list(load_spec(study_file, out).runs)
