"""One study run as a job: fit + test (or resume), the connectivity step, and the run's state on record.

Every launcher runs a run through ``run_job``: in the study's own process (sequential), as
``python -m ensemble_lab.study.job RUN_JSON`` (local; its output goes to ``<run>/study.log``), or
inside a SLURM job (``StudyJob``, submitit's checkpointable callable: preempted or out of time, it is
requeued and resumes from ``checkpoints/last.ckpt``). ``<run>/study_run.json`` says what the run was
made with (its arguments and resolved configuration) and where it stands: submitted, running, done,
failed (why, and the log).
"""

import json
import os
import socket
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ensemble_lab.config.failures import user_message
from ensemble_lab.config.lightning_cli import run_lightning_cli
from ensemble_lab.io import atomic_write_bytes
from ensemble_lab.runs.interrupts import INTERRUPTED, TERMINATED
from ensemble_lab.study.args import Connectivity
from ensemble_lab.study.records import Run, remember_resolved

LOG = "study.log"  # a run's output when it runs in a process of its own


def read_record(run: Run) -> dict[str, Any]:
    """``<run>/study_run.json`` as a mapping; empty if missing or unreadable."""
    try:
        record = json.loads(run.record.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(run: Run, state: str, resume: bool = False, **details: Any) -> None:
    """Record (atomically) what ``run`` is made with and its ``state``, with ``details`` (log, error, job, ...)."""
    record = {"argv": run.fit_args(resume), "config": run.resolved(), "state": state, "host": socket.gethostname(), "pid": os.getpid()}
    if run.upstream is not None:  # what its teacher (and theirs) was made with: a teacher made again changes it
        record["teachers"] = run.lineage()
    if run.teacher_dir is not None:  # the weights it learns from: a teacher trained again changes it too
        record["teacher_checkpoint"] = run.teacher_checkpoint()
    record.update(updated=time.strftime("%Y-%m-%d %H:%M:%S"), **{k: v for k, v in details.items() if v is not None})
    atomic_write_bytes(run.record, json.dumps(record, indent=2).encode())


def _call(argv: list[str], in_lightning: bool) -> str | None:
    """Run ``ensemble-lab argv`` in this process; None on success, else why it failed: the one-line error
    a user mistake stops it with (recorded, so --status shows it), else the exception (Ctrl-C goes on up)."""
    from ensemble_lab.connectivity.command import connectivity_main  # imported on use: it loads matplotlib

    try:  # the subcommand itself, not the console's main: that would turn its error into a bare exit status 2
        run_lightning_cli(argv) if in_lightning else connectivity_main(argv[1:])
    except SystemExit as error:
        if error.code in (INTERRUPTED, TERMINATED):  # the run noticed Ctrl-C or SIGTERM: the study stops too
            raise KeyboardInterrupt from None
        if error.code not in (0, None):
            return f"exit status {error.code}"
    except Exception as error:  # a bug in one run must not stop the grid; show it, go on
        if (message := user_message(error)) is not None:
            print(f"ensemble-lab: error: {message}", file=sys.stderr)
            return message
        traceback.print_exc()
        return f"{type(error).__name__}: {error}"
    return None


def execute(run: Run, resume: bool) -> str | None:
    """Fit + test one run in this process; None on success, else why it failed."""
    if not resume:  # a fresh start: a config.yaml from an attempt that failed before its first checkpoint is stale
        (run.run_dir / "config.yaml").unlink(missing_ok=True)
    failure = _call(run.fit_args(resume), in_lightning=True)
    return failure or (None if (run.run_dir / "results.json").exists() else "finished without writing results.json")


def teacher_failure(run: Run) -> str | None:
    """Why ``run`` cannot start because of its teacher (its run has no results.json), else None."""
    if run.teacher_dir is None or (run.teacher_dir / "results.json").exists():
        return None
    return f"{run.role} failed: {run.teacher} seed {run.seed} has no results.json ({run.teacher_dir})"


def run_job(run: Run, log: Path | None = None, job: str | None = None) -> str | None:
    """Take ``run`` from wherever it stands to done: fit + test (resumed if it has last.ckpt), then its
    connectivity step; record each state. Returns None on success, else why it failed."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    where: dict[str, Any] = {"log": str(log) if log else None, "job": job}
    if failure := teacher_failure(run):
        write_record(run, "failed", error=failure, **where)
        return failure
    status = run.status()
    write_record(run, "running", status == "resume", **where)
    failure = execute(run, resume=status == "resume") if status in ("new", "resume") else None
    if failure is None and run.connectivity is not None and not (run.run_dir / "connectivity.json").exists():
        failure = _call(run.connectivity_args(), in_lightning=False)
        failure = failure and f"connectivity: {failure}"
        failure = failure or (None if (run.run_dir / "connectivity.json").exists() else "connectivity wrote no connectivity.json")
    write_record(run, "failed" if failure else "done", status == "resume", error=failure, **where)
    return failure


def _as_dict(run: Run) -> dict[str, Any]:
    """``run`` as JSON-ready data, its teacher's run (and theirs) nested under "upstream"."""
    own = {k: v for k, v in asdict(run).items() if k != "upstream"}
    own.update(configs=[str(p) for p in run.configs], run_dir=str(run.run_dir), resolved=run.resolved())
    return {**own, "upstream": None if run.upstream is None else _as_dict(run.upstream)}


def _from_dict(raw: dict[str, Any]) -> Run:
    step = Connectivity(**raw["connectivity"]) if raw.get("connectivity") else None
    configs, overrides = tuple(Path(p) for p in raw["configs"]), tuple(raw["overrides"])
    upstream = _from_dict(raw["upstream"]) if raw.get("upstream") else None
    run = Run(raw["name"], raw["seed"], configs, overrides, Path(raw["run_dir"]), raw.get("teacher"), step, upstream, raw.get("spawn_epoch"))
    remember_resolved(run, raw["resolved"])
    return run


def run_to_json(run: Run) -> str:
    """``run`` as one JSON string (the argument of ``python -m ensemble_lab.study.job``)."""
    return json.dumps(_as_dict(run))


def run_from_json(text: str) -> Run:
    """The Run that ``run_to_json`` wrote (its and its teachers' resolved configurations remembered: not parsed again)."""
    return _from_dict(json.loads(text))


class StudyJob:
    """A SLURM job of a study (submitit pickles it): runs ``run`` on every task; rank 0 keeps the record.

    Preempted or near its time limit, submitit calls ``checkpoint()`` and requeues the job; the new
    attempt resumes the fit from ``checkpoints/last.ckpt`` (the study's ``--ckpt_path``).
    """

    def __init__(self, run: Run, resolved: dict[str, Any] | None = None) -> None:
        """
        Args:
            run: the study run this job takes to done.
            resolved: ``run.resolved()`` as the study computed it (spares the job a parse), or None.
        """
        self.run, self.resolved = run, resolved

    def __call__(self) -> None:
        """Run the job (inside SLURM); raises if the run failed, so SLURM marks the job FAILED."""
        if self.resolved is not None:
            remember_resolved(self.run, self.resolved)
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        log = self.run.run_dir / (LOG if rank == 0 else f"study.rank-{rank}.log")
        self.run.run_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as stream:  # this task's output goes to the run directory, like the local launcher's
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(stream.fileno(), 1), os.dup2(stream.fileno(), 2)
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
        if rank != 0:  # a DDP rank: trains, leaves the record and the connectivity step to rank 0
            failure = teacher_failure(self.run) or _call(self.run.fit_args(self.run.last_ckpt.exists()), in_lightning=True)
        else:
            failure = run_job(self.run, log, job)
        if failure:
            raise RuntimeError(f"study run {self.run.label} failed: {failure} (log: {log})")

    def checkpoint(self) -> Any:
        """submitit's hook before a requeue: the same run again, which resumes from its last.ckpt."""
        from submitit.core.utils import DelayedSubmission  # an optional dependency: only SLURM jobs call this

        return DelayedSubmission(StudyJob(self.run, self.resolved))


def main(argv: list[str]) -> None:
    """``python -m ensemble_lab.study.job RUN_JSON``: one run of a local study (exit status 1 if it failed)."""
    run = run_from_json(argv[0])
    try:
        failure = run_job(run, run.run_dir / LOG)
    except KeyboardInterrupt:
        raise SystemExit(INTERRUPTED) from None
    raise SystemExit(1 if failure else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
