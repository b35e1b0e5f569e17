"""``ensemble-lab study``: a grid of runs (methods × seeds), fit + test each, resumable, then the report.

A study file (YAML) names the grid::

    out: studies/digits                # default output directory (relative to the current one)
    seeds: [42, 69, 123]
    args: [--trainer.max_epochs=15]    # CLI-style overrides for every run (optional)
    methods:                           # name -> base config (+ overrides); the name is a directory
      batch_ensemble:
        config: ../digits/batch_ensemble.yaml   # relative to the study file, else to the current directory
        args: [--model.num_members=4]           # optional

Run ``<method>`` with seed ``s`` lives in ``<out>/<method>/seed_<s>/`` (TensorBoard logs,
config.yaml, checkpoints/last.ckpt, results.json, figures/). Runs go in sequence, in this process,
through ``ensemble_lab.cli.main``. A run with results.json is skipped; one with checkpoints/last.ckpt
but no results.json was interrupted and is resumed from that checkpoint; a failed run is reported
and the others still run. The study ends by printing (and writing ``<out>/report.*``) the report.
"""

import argparse
import json
import re
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ensemble_lab.errors import ConfigError, EnsembleLabError

STUDY_KEYS = {"out", "seeds", "args", "methods"}
METHOD_KEYS = {"config", "args"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Run:
    """One cell of the grid: method ``name`` (a directory name) with ``seed``."""

    name: str  # the method's key in the study file, a directory name
    seed: int  # passed as --seed_everything
    config: Path  # base config file (resolved)
    overrides: tuple[str, ...]  # the study's args, then the method's args
    run_dir: Path  # <out>/<name>/seed_<seed>

    @property
    def last_ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    def status(self) -> str:
        """"done" (results.json present), "resume" (last.ckpt but no results.json) or "new"."""
        if (self.run_dir / "results.json").exists():
            return "done"
        return "resume" if self.last_ckpt.exists() else "new"

    def fit_args(self, resume: bool) -> list[str]:
        """Arguments of ``ensemble_lab.cli.main`` for this run; the study's own options come last and win."""
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(self.run_dir.parent.parent), "name": self.run_dir.parent.name, "version": self.run_dir.name},
        }
        args = ["fit", "--config", str(self.config), *self.overrides, f"--seed_everything={self.seed}"]
        args += [f"--trainer.logger={json.dumps(logger)}", f"--checkpoint.dirpath={self.run_dir / 'checkpoints'}"]
        return args + ([f"--ckpt_path={self.last_ckpt}"] if resume else [])


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(f"{where} must be a list of CLI-style arguments such as [--trainer.max_epochs=5], got {value!r}")
    return tuple(str(v) for v in value)


def _resolve_config(raw: Any, study_file: Path, where: str) -> Path:
    if not isinstance(raw, str):
        raise ConfigError(f"{where} must be the path of a config file, got {raw!r}")
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
        config = _resolve_config(method.get("config"), study_file, f"{where}.config")
        overrides = common + _string_list(method.get("args"), f"{where}.args")
        runs += [Run(name, seed, config, overrides, out / name / f"seed_{seed}") for seed in seeds]
    return runs


def execute(run: Run, resume: bool) -> str | None:
    """Fit + test one run in this process; None on success, else why it failed."""
    from ensemble_lab.cli import main

    # SaveConfigCallback refuses to replace a config.yaml; one left by an interrupted attempt is stale.
    (run.run_dir / "config.yaml").unlink(missing_ok=True)
    sigint_before = signal.getsignal(signal.SIGINT)
    failure = None
    try:
        main(run.fit_args(resume))
    except SystemExit as error:
        failure = None if error.code in (0, None) else f"exit status {error.code}"
    except Exception as error:  # a bug in one run must not stop the grid; show it, go on
        traceback.print_exc()
        failure = f"{type(error).__name__}: {error}"
    # Lightning turns Ctrl-C into sys.exit(1) and leaves SIGINT ignored: the user wants to stop.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and sigint_before is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, sigint_before)
        raise KeyboardInterrupt
    if failure is None and not (run.run_dir / "results.json").exists():
        failure = "finished without writing results.json"
    return failure


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
    return p


def study_main(argv: Sequence[str]) -> None:
    """``ensemble-lab study --config FILE [--out DIR] [--dry_run]``."""
    from ensemble_lab.report import build_report, to_markdown, write_report

    options = parser().parse_args(list(argv))
    runs = load_study(options.config, options.out)
    out = runs[0].run_dir.parent.parent
    if options.dry_run:
        for run in runs:
            print(f"{run.status():>6}  {run.run_dir}\n        ensemble-lab {shlex.join(run.fit_args(run.status() == 'resume'))}")
        return
    failed: list[str] = []
    start = time.perf_counter()
    try:
        for k, run in enumerate(runs, 1):
            label = f"[{k}/{len(runs)}] {run.name} seed {run.seed}"
            status = run.status()
            if status == "done":
                print(f"study: {label}: done before, skipped ({run.run_dir / 'results.json'})", flush=True)
                continue
            print(f"study: {label}: {'resuming from ' + str(run.last_ckpt) if status == 'resume' else 'running'}", flush=True)
            began = time.perf_counter()
            failure = execute(run, resume=status == "resume")
            if failure:
                failed.append(f"{run.name} seed {run.seed} ({failure})")
            print(f"study: {label}: {'FAILED: ' + failure if failure else 'finished'} in {time.perf_counter() - began:.1f} s", flush=True)
    except KeyboardInterrupt:
        print("\nstudy: interrupted; run the same command again to resume (finished runs are skipped)", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"\nstudy: {len(runs)} runs in {out}, {len(failed)} failed, {time.perf_counter() - start:.1f} s\n")
    try:
        groups = build_report([out])
    except EnsembleLabError as error:
        print(f"study: no report: {error}")
    else:
        print(to_markdown(groups))
        write_report(groups, out)
    if failed:
        raise EnsembleLabError(f"{len(failed)} of {len(runs)} runs failed: {'; '.join(failed)}. Run the same command again to retry them.")
