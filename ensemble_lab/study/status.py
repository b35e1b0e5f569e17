"""Where each run of a study stands (``ensemble-lab study --status``) and what a study would run (``--dry_run``).

States: ``done``; ``changed`` (finished or interrupted with other arguments); ``failed`` (why, and its log);
``running`` (a process on this machine that is still alive, or a SLURM job); ``pending`` (not started,
queued, interrupted: it resumes from last.ckpt, or waiting for its connectivity step).
"""

import os
import shlex
import socket
from collections import Counter
from collections.abc import Sequence

from ensemble_lab.study.job import read_record
from ensemble_lab.study.records import Run


def _alive(record: dict) -> bool:
    """Whether the process a record names may still run: on this host, its pid exists; elsewhere (a SLURM node) assumed."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record.get("pid", 0)), 0)
    except (OSError, ValueError):
        return False
    return int(record.get("pid", 0)) > 0


def run_state(run: Run) -> tuple[str, str]:
    """(state, detail) of one run: done, changed, failed, running or pending (see the module docstring)."""
    state = run.state()
    if state == "done":
        return "done", str(run.run_dir / "results.json")
    if state == "changed":
        return "changed", f"made with other arguments: {run.change()}"
    record = read_record(run)
    log = f" (log: {record['log']})" if record.get("log") else ""
    job = f" as SLURM job {record['job']}" if record.get("job") else ""
    if record.get("state") == "failed":
        return "failed", f"{record.get('error')}{log}"
    if record.get("state") == "running" and _alive(record):
        return "running", f"since {record.get('updated')} on {record.get('host')}{job}{log}"
    if record.get("state") == "submitted":
        return "pending", f"queued{job} at {record.get('updated')}"
    waiting = {"new": "not started", "resume": f"interrupted; resumes from {run.last_ckpt}", "connectivity": "its connectivity step"}
    return "pending", waiting[state] + (f", after its {run.role} {run.teacher}" if run.teacher and state == "new" else "")


def print_status(runs: Sequence[Run]) -> None:
    """Print every run's state and detail, then the count of each state; starts nothing."""
    counts: Counter[str] = Counter()
    for run in runs:
        state, detail = run_state(run)
        counts[state] += 1
        print(f"{state:>8}  {run.label:<30} {detail}")
    print(f"\nstudy: {len(runs)} runs in {runs[0].run_dir.parent.parent}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


def commands(run: Run) -> list[str]:
    """The command lines a run would execute now: its fit (resumed or not) and its connectivity step."""
    state = run.state()
    lines = [] if state in ("done", "connectivity") else [f"ensemble-lab {shlex.join(run.fit_args(state == 'resume'))}"]
    return lines + ([f"ensemble-lab {shlex.join(run.connectivity_args())}"] if run.connectivity and state != "done" else [])


def print_runs(runs: Sequence[Run]) -> None:
    """Print every run's state and the commands it would execute (``--dry_run``)."""
    for run in runs:
        state = run.state()
        print(f"{state:>7}  {run.run_dir}")
        for line in commands(run) if state != "done" else [f"ensemble-lab {shlex.join(run.fit_args(False))}"]:
            print(f"         {line}")
        if state == "changed":
            print(f"         differs from what it was made with: {run.change()}")
