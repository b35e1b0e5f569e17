"""``ensemble-lab study --launcher sequential``: the runs one after the other in the study's own process, and
what every launcher does before a run starts (skip it if done, move a changed one aside, refuse it if its
teacher failed)."""

import time
from collections.abc import Sequence
from pathlib import Path

from ensemble_lab.runs.interrupts import InterruptWatch
from ensemble_lab.study.job import run_job, write_record
from ensemble_lab.study.records import Run, move_aside


def prepare(run: Run, label: str, done: dict[Path, bool]) -> str | None:
    """What a run needs before it starts: "skip" (done before), a teacher failure, or None (start it);
    a changed run (only with --rerun_changed) is moved aside first."""
    state = run.state()
    if state == "done":
        print(f"study: {label}: done before, skipped ({run.run_dir / 'results.json'})", flush=True)
        return "skip"
    if state == "changed":  # refuse_changed() stops the study otherwise; first, so a failure below is not recorded in the old run
        print(f"study: {label}: arguments changed ({run.change()}); old run moved to {move_aside(run.run_dir)}", flush=True)
    if run.teacher_dir is not None and done.get(run.teacher_dir) is False:
        failure = f"{run.role} failed: {run.teacher} seed {run.seed} did not finish"
        write_record(run, "failed", error=failure)
        print(f"study: {label}: FAILED: {failure}", flush=True)
        return failure
    what = {"resume": f"resuming from {run.last_ckpt}", "connectivity": "running its connectivity step"}.get(run.status(), "running")
    print(f"study: {label}: {what}", flush=True)
    return None


def run_sequential(runs: Sequence[Run], watch: InterruptWatch) -> list[str]:
    """Run the grid in order in this process; returns "<method> seed <s> (why)" for each run that failed."""
    failed: list[str] = []
    done: dict[Path, bool] = {}
    for k, run in enumerate(runs, 1):
        label = f"[{k}/{len(runs)}] {run.label}"
        failure = prepare(run, label, done)
        if failure is None:
            began = time.perf_counter()
            failure = run_job(run)
            watch.check()
            print(f"study: {label}: {'FAILED: ' + failure if failure else 'finished'} in {time.perf_counter() - began:.1f} s", flush=True)
        done[run.run_dir] = failure in (None, "skip")
        if failure not in (None, "skip"):
            failed.append(f"{run.label} ({failure})")
    return failed
