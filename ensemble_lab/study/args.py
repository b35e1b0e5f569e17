"""The options of ``ensemble-lab study`` (its own and the SLURM ones), and how two ``ensemble-lab fit``
argument lists differ, in words: the study compares the arguments a run was made with (its
study_run.json) with those the study file gives it today."""

import argparse
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble_lab.errors import ConfigError

#: fit options that only place a run in its directory; they follow from --out and are not compared
PLACEMENT = ("--trainer.logger", "--checkpoint.dirpath", "--ckpt_path", "--run_name")


def _settings(argv: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """``argv`` as (option, value) pairs (``--k=v`` and ``--k v`` alike; a positional has option None),
    without the options that only place the run in its directory (they follow from --out)."""
    pairs: list[tuple[str | None, str | None]] = []
    tokens = [str(t) for t in argv]
    k = 0
    while k < len(tokens):
        token = tokens[k]
        if not token.startswith("--"):
            pairs.append((None, token))
        elif "=" in token:
            option, value = token.split("=", 1)
            pairs.append((option, value))
        elif k + 1 < len(tokens) and not tokens[k + 1].startswith("--"):
            pairs.append((token, tokens[k + 1]))
            k += 1
        else:
            pairs.append((token, None))
        k += 1
    return [(option, value) for option, value in pairs if option not in PLACEMENT]


def _shown(option: str | None, value: str | None) -> str:
    """One (option, value) pair as written on a command line."""
    return str(value) if option is None else option if value is None else f"{option}={value}"


def describe_change(before: Sequence[str], after: Sequence[str]) -> str | None:
    """What differs from fit arguments ``before`` to ``after``, e.g. "--trainer.max_epochs: 3 -> 5"; None if nothing."""
    old, new = _settings(before), _settings(after)
    if old == new:
        return None
    removed, added = [p for p in old if p not in new], [p for p in new if p not in old]
    parts = []
    for option, value in removed:
        replaced = [p for p in added if option is not None and p[0] == option]
        if len(replaced) == 1 and sum(p[0] == option for p in removed) == 1:
            parts.append(f"{option}: {value} -> {replaced[0][1]}")
            added.remove(replaced[0])
        else:
            parts.append(f"dropped {_shown(option, value)}")
    parts += [f"added {_shown(option, value)}" for option, value in added]
    return "; ".join(parts) or f"the same arguments in another order: {shlex.join(_shown(*p) for p in new)}"


#: SLURM options the study knows (from the study file's `slurm:` mapping or --slurm.<key>); any other key is
#: passed to sbatch as it is (submitit's additional_parameters), e.g. --slurm.mail_type END
SLURM_OPTIONS = {
    "partition": "partition to submit to",
    "time": "time limit per job: minutes, or [D-]HH:MM:SS (default 1440); a job that reaches it is requeued and resumes",
    "gpus_per_node": "GPUs per job when a run's --trainer.devices is auto (default 1); a run with devices N gets N",
    "cpus_per_task": "CPU cores per task (one task per GPU)",
    "mem": "memory per node, e.g. 32G",
    "account": "account to charge",
    "qos": "quality of service",
    "constraint": "node features required",
    "exclude": "nodes to avoid",
    "array_parallelism": "at most this many jobs of an array at a time",
    "max_requeues": "times a job out of time is requeued (default 3; preemption does not count)",
    "setup": "shell lines run before the job, e.g. [source .venv/bin/activate] (study file only)",
}


def parser() -> argparse.ArgumentParser:
    """Options of ``ensemble-lab study`` (besides --slurm.<key>, read by ``parse_study_args``)."""
    p = argparse.ArgumentParser(
        prog="ensemble-lab study",
        description="Run a grid of methods × seeds (fit + test, one directory per run), skipping finished runs and "
        "resuming interrupted ones, then print the report. SLURM options: --slurm.<key> VALUE, with key one of "
        + "; ".join(f"{k} ({v})" for k, v in SLURM_OPTIONS.items() if k != "setup")
        + "; any other key goes to sbatch as it is.",
    )
    p.add_argument("--config", type=Path, required=True, help="study file, e.g. configs/study/digits.yaml")
    p.add_argument("--out", type=Path, default=None, help="study directory (default: the file's 'out', else studies/<name>)")
    p.add_argument(
        "--launcher",
        choices=("sequential", "local", "slurm"),
        default="sequential",
        help="sequential: one run after the other in this process (default); local: --parallel runs at a time, each in "
        "its own process (one GPU each if there are GPUs); slurm: job arrays through submitit",
    )
    p.add_argument("--parallel", type=int, default=None, help="local: runs at a time (default: the number of GPUs, else 2)")
    p.add_argument("--no_wait", action="store_true", help="slurm: submit and return (default: wait for the jobs, then report)")
    p.add_argument(
        "--dry_run", action="store_true", help="list the runs, their state, their commands and what would be submitted; run nothing"
    )
    p.add_argument("--status", action="store_true", help="list every run's state (pending, running, done, failed, changed); start nothing")
    p.add_argument(
        "--rerun_changed",
        action="store_true",
        help="run afresh the finished or interrupted runs made with other arguments, moving each old run directory to <run>.prev-N",
    )
    return p


def _value(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def parse_study_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, int | str]]:
    """The study's options and the ``--slurm.<key> VALUE`` (or ``--slurm.<key>=VALUE``) pairs among ``argv``."""
    cli = parser()
    options, rest = cli.parse_known_args(list(argv))
    slurm: dict[str, int | str] = {}
    k = 0
    while k < len(rest):
        token = rest[k]
        if not token.startswith("--slurm.") or len(token) == len("--slurm."):
            cli.error(f"unrecognized arguments: {' '.join(rest[k:])}")
        key, has_value, value = token[len("--slurm.") :].partition("=")
        if not has_value:
            if k + 1 >= len(rest) or rest[k + 1].startswith("--"):
                cli.error(f"{token} needs a value, e.g. {token} VALUE")
            value, k = rest[k + 1], k + 1
        slurm[key] = _value(value)
        k += 1
    if options.parallel is not None and options.parallel < 1:
        cli.error(f"--parallel must be at least 1, got {options.parallel}")
    return options, slurm


@dataclass(frozen=True)
class Connectivity:
    """The ``ensemble-lab connectivity`` step a run takes after its test."""

    points: int = 11  # interpolation points per pair of members, ends included
    set: str | None = None  # evaluation set; None: the command's default (the validation split)
    align: str = "none"  # "weight_matching": every pair walked raw and aligned (--align)
    repair: bool = False  # with align weight_matching: the aligned pairs walked a third time with REPAIR (--repair)


ALIGNS = ("none", "weight_matching")


def connectivity_step(raw: Any, where: str) -> Connectivity | None:
    """``false`` / ``true`` / ``{points: N, set: NAME, align: none | weight_matching, repair: BOOL}`` as a Connectivity step
    (None: none); ``repair: true`` only with ``align: weight_matching``."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return Connectivity()
    if isinstance(raw, dict) and not set(raw) - {"points", "set", "align", "repair"}:
        points, name, align, repair = raw.get("points", 11), raw.get("set"), raw.get("align", "none"), raw.get("repair", False)
        if isinstance(points, int) and not isinstance(points, bool) and points >= 2 and isinstance(name, (str, type(None))) and align in ALIGNS:
            if repair is True and align != "weight_matching":
                raise ConfigError(f"{where}: repair: true repairs the aligned path; add align: weight_matching")
            if isinstance(repair, bool):
                return Connectivity(points, name, align, repair)
    raise ConfigError(
        f"{where} must be false, true or a mapping {{points: N >= 2, set: NAME, align: none | weight_matching, repair: true | false}}, got {raw!r}"
    )


def teachers_first(names: list[str], teachers: dict[str, str | None], study_file: Path) -> list[str]:
    """Method names in file order, each teacher moved before its students; ConfigError for an unknown teacher or a cycle."""
    for name, teacher in teachers.items():
        if teacher is not None and teacher not in teachers:
            raise ConfigError(f"{study_file}: methods.{name}.teacher {teacher!r} is not a method of this study; choose from {names}")
    order: list[str] = []
    for name in names:
        chain: list[str] = []
        current: str | None = name
        while current is not None and current not in order:
            if current in chain:
                cycle = " -> ".join([*chain[chain.index(current) :], current])
                raise ConfigError(f"{study_file}: teachers form a cycle ({cycle}); a teacher must not learn from its students")
            chain.append(current)
            current = teachers[current]
        order += reversed(chain)
    return order
