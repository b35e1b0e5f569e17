"""``ensemble-lab study``: a grid of runs (methods × seeds), fit + test each, resumable, then the report.

A study file (YAML) names the grid::

    out: studies/digits                # default output directory (relative to the current one)
    seeds: [42, 69, 123]
    args: [--trainer.max_epochs=15]    # CLI-style overrides for every run (optional)
    methods:                           # name -> base config (+ overrides); the name is a directory
      batch_ensemble:
        config: ../digits/batch_ensemble.yaml   # relative to the study file, else to the current directory
        args: [--model.num_members=4]           # optional
      be_rank2:                                 # a list: a base and a variant on top (repeated --config)
        config: [../digits/batch_ensemble.yaml, ../ablations/digits/rank2.yaml]

Run ``<method>`` with seed ``s`` lives in ``<out>/<method>/seed_<s>/`` (TensorBoard logs,
config.yaml, checkpoints/last.ckpt, results.json, figures/, and study_run.json: the fit arguments
the study used). Every run's arguments are first checked with the CLI's parser. Runs go in
sequence, in this process, through the same LightningCLI as ``ensemble-lab fit``. A run with results.json is skipped;
one with checkpoints/last.ckpt but no results.json was interrupted and is resumed from that
checkpoint (config.yaml is kept, the resume's config goes to config.resume-N.yaml). A finished or
interrupted run recorded with other arguments stops the study before anything runs, unless
--rerun_changed moves it to ``<run>.prev-N`` and runs it afresh. A failed run is reported and the
others still run; Ctrl-C stops the study (status 130). The study ends by printing (and writing
``<out>/report.*``) the report of its runs.
"""

import argparse
import functools
import json
import re
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ensemble_lab.cli.failures import user_message
from ensemble_lab.cli.interrupts import INTERRUPTED, InterruptWatch
from ensemble_lab.cli.lightning_cli import check_arguments, run_lightning_cli
from ensemble_lab.cli.run_config import comparable, differences, flatten
from ensemble_lab.cli.study_args import describe_change
from ensemble_lab.errors import ConfigError, EnsembleLabError
from ensemble_lab.run_files import atomic_write_bytes, first_free_number

STUDY_KEYS = {"out", "seeds", "args", "methods"}
METHOD_KEYS = {"config", "args"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
RECORD = "study_run.json"  # in each run directory: {"argv": the fit arguments the study last used}


@dataclass(frozen=True)
class Run:
    """One cell of the grid: method ``name`` (a directory name) with ``seed``."""

    name: str  # the method's key in the study file, a directory name
    seed: int  # passed as --seed_everything
    configs: tuple[Path, ...]  # config files (resolved), later ones overriding earlier ones
    overrides: tuple[str, ...]  # the study's args, then the method's args
    run_dir: Path  # <out>/<name>/seed_<seed>

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}"

    @property
    def last_ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def record(self) -> Path:
        """``study_run.json``: the fit arguments the study last ran this run with."""
        return self.run_dir / RECORD

    def status(self) -> str:
        """"done" (results.json present), "resume" (last.ckpt but no results.json) or "new"."""
        if (self.run_dir / "results.json").exists():
            return "done"
        return "resume" if self.last_ckpt.exists() else "new"

    def fit_args(self, resume: bool) -> list[str]:
        """Arguments of ``ensemble-lab`` for this run; the study's own options come last and win.

        The logger names the run directory (``<out>/<name>/seed_<s>``) and checkpoints go to Lightning's
        default ``<run>/checkpoints`` (dirpath null): a resume then continues in the run directory the way
        ``ensemble-lab fit --ckpt_path`` does, keeping config.yaml and adding config.resume-N.yaml.
        """
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(self.run_dir.parent.parent), "name": self.run_dir.parent.name, "version": self.run_dir.name},
        }
        configs = [arg for path in self.configs for arg in ("--config", str(path))]
        args = ["fit", *configs, *self.overrides, f"--seed_everything={self.seed}", f"--run_name={self.name}"]
        args += [f"--trainer.logger={json.dumps(logger)}", "--checkpoint.dirpath=null"]
        return args + ([f"--ckpt_path={self.last_ckpt}"] if resume else [])

    def resolved(self) -> dict[str, Any]:
        """The run's resolved configuration today (config files read, defaults filled in), as flat comparable keys."""
        return _resolved(tuple(self.fit_args(resume=False)))

    def change(self) -> str | None:
        """What differs between the recorded run and today's; None if they match or nothing is recorded.

        The resolved configurations are compared, so an edit inside a method's config file counts; a record
        from before the study kept them is compared by its arguments.
        """
        if not self.record.exists():
            return None  # a run made before the study recorded its arguments: taken as matching
        try:
            record = json.loads(self.record.read_text())
            recorded, config = record["argv"], record.get("config")
            if not isinstance(recorded, list) or not isinstance(config, (dict, type(None))):
                raise TypeError("argv is not a list, or config not a mapping")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return f"{RECORD} unreadable ({error})"
        if config is None:
            return describe_change(recorded, self.fit_args(resume=False))
        return "; ".join(differences(comparable(config), self.resolved())) or None

    def state(self) -> str:
        """``status()``, or "changed" for a finished or interrupted run made with other arguments."""
        status = self.status()
        return "changed" if status != "new" and self.change() is not None else status


@functools.cache
def _resolved(argv: tuple[str, ...]) -> dict[str, Any]:
    """A run's flat comparable configuration; parsed once per study command (every run is compared several times)."""
    return comparable(flatten(check_arguments(argv)))


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


def load_study(study_file: Path, out: Path | None = None) -> list[Run]:
    """Read a study file and list its runs, method by method, seed by seed.

    Args:
        study_file: the study YAML (see the module docstring).
        out: output directory; None uses the file's ``out`` or ``studies/<file stem>``.
    """
    study_file = Path(study_file)
    if not study_file.is_file():
        raise ConfigError(f"study file {study_file} not found")
    try:
        spec = yaml.safe_load(study_file.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{study_file} is not valid YAML: {error}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("methods"), dict) or not spec["methods"]:
        raise ConfigError(f"{study_file} needs a 'methods' mapping: name -> {{config: path, args: [...]}}")
    if unknown := set(spec) - STUDY_KEYS:
        raise ConfigError(f"{study_file}: unknown keys {sorted(unknown)}; allowed: {sorted(STUDY_KEYS)}")
    seeds = spec.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{study_file}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    common = _string_list(spec.get("args"), f"{study_file}: 'args'")
    out = Path(out if out is not None else spec.get("out") or Path("studies") / study_file.stem).resolve()
    runs = []
    for name, method in spec["methods"].items():
        where = f"{study_file}: methods.{name}"
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ConfigError(f"{where}: a method name is a directory name (letters, digits, _ . -), got {name!r}")
        if not isinstance(method, dict) or (unknown := set(method) - METHOD_KEYS):
            raise ConfigError(f"{where} must be a mapping with keys {sorted(METHOD_KEYS)}, got {method!r}")
        configs = _resolve_configs(method.get("config"), study_file, f"{where}.config")
        overrides = common + _string_list(method.get("args"), f"{where}.args")
        runs += [Run(name, seed, configs, overrides, out / name / f"seed_{seed}") for seed in seeds]
    return runs


def validate(runs: Sequence[Run]) -> None:
    """Raise ConfigError naming the first run whose fit arguments the CLI refuses (before any training)."""
    for run in runs:
        try:
            check_arguments(run.fit_args(resume=False))
        except ConfigError as error:
            raise ConfigError(f"study run {run.label} ({run.run_dir}): {error}") from None


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


def execute(run: Run, resume: bool) -> str | None:
    """Fit + test one run in this process; None on success, else why it failed.

    The arguments go to ``<run>/study_run.json`` first, so an interrupted run has them on record too.
    """
    args = run.fit_args(resume)
    if not resume:  # a fresh start: a config.yaml from an attempt that failed before its first checkpoint is stale
        (run.run_dir / "config.yaml").unlink(missing_ok=True)
    atomic_write_bytes(run.record, json.dumps({"argv": args, "config": run.resolved()}, indent=2).encode())
    try:
        run_lightning_cli(args)
    except SystemExit as error:
        if error.code == INTERRUPTED:  # the run noticed Ctrl-C itself
            raise KeyboardInterrupt from None
        if error.code not in (0, None):
            return f"exit status {error.code}"
    except Exception as error:  # a bug in one run must not stop the grid; show it, go on
        if (message := user_message(error)) is not None:
            print(f"ensemble-lab: error: {message}", file=sys.stderr)
            return message
        traceback.print_exc()
        return f"{type(error).__name__}: {error}"
    return None if (run.run_dir / "results.json").exists() else "finished without writing results.json"


def parser() -> argparse.ArgumentParser:
    """Options of ``ensemble-lab study``."""
    p = argparse.ArgumentParser(
        prog="ensemble-lab study",
        description="Run a grid of methods × seeds (fit + test, one directory per run) in sequence, skipping "
        "finished runs and resuming interrupted ones, then print the report.",
    )
    p.add_argument("--config", type=Path, required=True, help="study file, e.g. configs/study/digits.yaml")
    p.add_argument("--out", type=Path, default=None, help="study directory (default: the file's 'out', else studies/<name>)")
    p.add_argument("--dry_run", action="store_true", help="list the runs, their state and their commands; run nothing")
    p.add_argument(
        "--rerun_changed",
        action="store_true",
        help="run afresh the finished or interrupted runs made with other arguments, moving each old run directory to <run>.prev-N",
    )
    return p


def dry_run(runs: Sequence[Run]) -> None:
    """Check every run's arguments with the CLI parser, then print every run's state and command."""
    validate(runs)
    for run in runs:
        state = run.state()
        print(f"{state:>7}  {run.run_dir}\n         ensemble-lab {shlex.join(run.fit_args(state == 'resume'))}")
        if state == "changed":
            print(f"         differs from what it was made with: {run.change()}")


def run_one(run: Run, label: str, watch: InterruptWatch) -> str | None:
    """Skip, start, resume or restart (a changed run, moved aside first) one run; why it failed, if it did.

    Raises KeyboardInterrupt if Ctrl-C came during the run, whatever the run made of it.
    """
    state = run.state()
    if state == "done":
        print(f"study: {label}: done before, skipped ({run.run_dir / 'results.json'})", flush=True)
        return None
    if state == "changed":  # only with --rerun_changed: refuse_changed() stops the study otherwise
        print(f"study: {label}: arguments changed ({run.change()}); old run moved to {move_aside(run.run_dir)}", flush=True)
    print(f"study: {label}: {'resuming from ' + str(run.last_ckpt) if state == 'resume' else 'running'}", flush=True)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    failure = execute(run, resume=state == "resume")
    watch.check()
    print(f"study: {label}: {'FAILED: ' + failure if failure else 'finished'} in {time.perf_counter() - began:.1f} s", flush=True)
    return failure


def run_all(runs: Sequence[Run], watch: InterruptWatch) -> list[str]:
    """Run the grid in order; returns "<method> seed <s> (why)" for each run that failed."""
    failed = []
    for k, run in enumerate(runs, 1):
        if failure := run_one(run, f"[{k}/{len(runs)}] {run.label}", watch):
            failed.append(f"{run.label} ({failure})")
    return failed


def report(runs: Sequence[Run], failed: Sequence[str], seconds: float) -> None:
    """Print the summary and the report of the study's runs, write ``<out>/report.*``; raise if runs failed."""
    from ensemble_lab.cli.report import build_report, to_markdown, write_report

    out = runs[0].run_dir.parent.parent
    print(f"\nstudy: {len(runs)} runs in {out}, {len(failed)} failed, {seconds:.1f} s\n")
    # the study's own runs only: not the <run>.prev-N directories --rerun_changed keeps below <out>
    results = [run.run_dir / "results.json" for run in runs if (run.run_dir / "results.json").exists()]
    try:
        if not results:
            raise EnsembleLabError("no run has a results.json")
        groups = build_report(results)
    except EnsembleLabError as error:
        print(f"study: no report: {error}")
    else:
        print(to_markdown(groups))
        write_report(groups, out)
    if failed:
        raise EnsembleLabError(f"{len(failed)} of {len(runs)} runs failed: {'; '.join(failed)}. Run the same command again to retry them.")


def study_main(argv: Sequence[str]) -> None:
    """``ensemble-lab study --config FILE [--out DIR] [--dry_run] [--rerun_changed]``."""
    options = parser().parse_args(list(argv))
    _resolved.cache_clear()  # config files may have changed since an earlier study in this process
    runs = load_study(options.config, options.out)
    if options.dry_run:
        dry_run(runs)
        return
    start = time.perf_counter()
    with InterruptWatch() as watch:
        try:
            validate(runs)  # a typo in the args: one error now, not one failed run after another
            if not options.rerun_changed:
                refuse_changed(runs)
            failed = run_all(runs, watch)
        except KeyboardInterrupt:
            print("\nstudy: interrupted; run the same command again to resume (finished runs are skipped)", file=sys.stderr, flush=True)
            raise SystemExit(INTERRUPTED) from None
    report(runs, failed, time.perf_counter() - start)
