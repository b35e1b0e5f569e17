"""``ensemble-lab study --launcher local``: N runs at a time, each ``python -m ensemble_lab.study.job`` in its
own process, on its own GPU if there are GPUs, with cores // N torch threads."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ensemble_lab.runs.interrupts import InterruptWatch
from ensemble_lab.study.job import LOG, read_record, run_to_json, write_record
from ensemble_lab.study.launchers.sequential import prepare
from ensemble_lab.study.records import Run


def visible_gpus() -> list[str]:
    """The GPUs a local run may be pinned to, as CUDA_VISIBLE_DEVICES names them (empty: none)."""
    count = torch.cuda.device_count()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def local_env(slot: int, parallel: int, gpus: Sequence[str]) -> dict[str, str]:
    """Environment of the run in slot ``slot`` of ``parallel``: its own GPU (or none), max(1, cores // parallel) threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // parallel))
    return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)] if gpus else "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _job_command(run: Run) -> list[str]:
    return [sys.executable, "-m", "ensemble_lab.study.job", run_to_json(run)]


def _ended(run: Run, code: int) -> str | None:
    """Why a local run's process ended badly (None: it finished); recorded if the process could not say so itself."""
    if code == 0:
        return None
    record = read_record(run)
    if record.get("state") == "failed" and record.get("error"):
        return str(record["error"])
    failure = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    write_record(run, "failed", error=failure, log=str(run.run_dir / LOG))
    return failure


def run_local(runs: Sequence[Run], parallel: int, watch: InterruptWatch) -> list[str]:
    """Run the grid ``parallel`` runs at a time, each in its own process (output in ``<run>/study.log``); a student
    starts once its teacher finished. Returns "<method> seed <s> (why; log: ...)" for each run that failed."""
    gpus, failed = visible_gpus(), []
    done: dict[Path, bool] = {}
    waiting = []
    for k, run in enumerate(runs, 1):  # finished runs first: they need no process
        if run.state() == "done":
            done[run.run_dir] = prepare(run, f"[{k}/{len(runs)}] {run.label}", done) == "skip"
        else:
            waiting.append((k, run))
    active: dict[int, tuple[subprocess.Popen, Run, str, float]] = {}  # slot -> (process, run, label, start)
    try:
        while waiting or active:
            for k, run in list(waiting):
                free = [slot for slot in range(parallel) if slot not in active]
                if not free or (run.teacher_dir is not None and run.teacher_dir not in done):  # no slot, or its teacher still runs
                    continue
                waiting.remove((k, run))
                label = f"[{k}/{len(runs)}] {run.label}"
                if (failure := prepare(run, label, done)) is not None:
                    done[run.run_dir] = failure == "skip"
                    failed += [] if failure == "skip" else [f"{run.label} ({failure})"]
                    continue
                run.run_dir.mkdir(parents=True, exist_ok=True)
                env = local_env(free[0], parallel, gpus)
                with open(run.run_dir / LOG, "ab") as log:
                    log.write(f"study: {run.label}: {' '.join(f'{k}={v}' for k, v in env.items())}\n".encode())
                    log.flush()
                    process = subprocess.Popen(_job_command(run), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
                print(f"study: {label}: in its own process (pid {process.pid}, log {run.run_dir / LOG})", flush=True)
                active[free[0]] = (process, run, label, time.perf_counter())
            finished = [slot for slot, (process, *_) in active.items() if process.poll() is not None]
            for slot in finished:
                process, run, label, began = active.pop(slot)
                failure = _ended(run, process.returncode)
                done[run.run_dir] = failure is None
                state = f"FAILED: {failure} (log: {run.run_dir / LOG})" if failure else "finished"
                print(f"study: {label}: {state} in {time.perf_counter() - began:.1f} s", flush=True)
                failed += [f"{run.label} ({failure}; log: {run.run_dir / LOG})"] if failure else []
            watch.check()
            if not finished:
                time.sleep(0.2)
    except KeyboardInterrupt:
        for process, *_ in active.values():  # Ctrl-C in a terminal reached them too; a signal sent to the study alone did not
            process.send_signal(signal.SIGINT)
        for process, *_ in active.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    return failed
