"""How ``ensemble-lab study`` runs its runs: ``sequential`` (one after the other in this process),
``local`` (N at a time, each ``python -m ensemble_lab.cli.study_job`` in its own process, on its own
GPU if there are GPUs, with cores // N torch threads) or ``slurm`` (job arrays through submitit, see
``ensemble_lab.cli.slurm_launcher``). Every launcher skips finished runs, resumes interrupted ones,
starts a student only after its teacher finished, and ends with the same report.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ensemble_lab.cli.interrupts import INTERRUPTED, InterruptWatch
from ensemble_lab.cli.study import Run, Study, forget_resolved, load_spec, move_aside, refuse_changed
from ensemble_lab.cli.study_args import parse_study_args
from ensemble_lab.cli.study_checks import validate
from ensemble_lab.cli.study_job import LOG, read_record, run_job, run_to_json, write_record
from ensemble_lab.cli.study_status import print_runs, print_status
from ensemble_lab.errors import EnsembleLabError


def _prepare(run: Run, label: str, done: dict[Path, bool]) -> str | None:
    """What a run needs before it starts: "skip" (done before), a teacher failure, or None (start it);
    a changed run (only with --rerun_changed) is moved aside first."""
    state = run.state()
    if state == "done":
        print(f"study: {label}: done before, skipped ({run.run_dir / 'results.json'})", flush=True)
        return "skip"
    if state == "changed":  # refuse_changed() stops the study otherwise; first, so a failure below is not recorded in the old run
        print(f"study: {label}: arguments changed ({run.change()}); old run moved to {move_aside(run.run_dir)}", flush=True)
    if run.teacher_dir is not None and done.get(run.teacher_dir) is False:
        failure = f"teacher failed: {run.teacher} seed {run.seed} did not finish"
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
        failure = _prepare(run, label, done)
        if failure is None:
            began = time.perf_counter()
            failure = run_job(run)
            watch.check()
            print(f"study: {label}: {'FAILED: ' + failure if failure else 'finished'} in {time.perf_counter() - began:.1f} s", flush=True)
        done[run.run_dir] = failure in (None, "skip")
        if failure not in (None, "skip"):
            failed.append(f"{run.label} ({failure})")
    return failed


def visible_gpus() -> list[str]:
    """The GPUs a local run may be pinned to, as CUDA_VISIBLE_DEVICES names them (empty: none)."""
    import torch

    count = torch.cuda.device_count()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def local_env(slot: int, parallel: int, gpus: Sequence[str]) -> dict[str, str]:
    """Environment of the run in slot ``slot`` of ``parallel``: its own GPU (or none), max(1, cores // parallel) threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // parallel))
    return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)] if gpus else "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _job_command(run: Run) -> list[str]:
    return [sys.executable, "-m", "ensemble_lab.cli.study_job", run_to_json(run)]


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
            done[run.run_dir] = _prepare(run, f"[{k}/{len(runs)}] {run.label}", done) == "skip"
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
                if (failure := _prepare(run, label, done)) is not None:
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


def report(study: Study, failed: Sequence[str], seconds: float) -> None:
    """Print the summary and the report of the study's runs, write ``<out>/report.*``; raise if runs failed.

    With a ``report:`` list in the study file, the report is ``ensemble-lab report <results.json>... --out <out> <list>``.
    """
    from ensemble_lab.cli.report import build_report, report_main, to_markdown, write_report

    runs, out = study.runs, study.out
    print(f"\nstudy: {len(runs)} runs in {out}, {len(failed)} failed, {seconds:.1f} s\n")
    # the study's own runs only: not the <run>.prev-N directories --rerun_changed keeps below <out>
    results = [run.run_dir / "results.json" for run in runs if (run.run_dir / "results.json").exists()]
    try:
        if not results:
            raise EnsembleLabError("no run has a results.json")
        if study.report_args:
            report_main([*map(str, results), "--out", str(out), *study.report_args])
        else:
            groups = build_report(results)
            print(to_markdown(groups))
            write_report(groups, out)
    except EnsembleLabError as error:
        print(f"study: no report: {error}")
    if failed:
        raise EnsembleLabError(f"{len(failed)} of {len(runs)} runs failed: {'; '.join(failed)}. Run the same command again to retry them.")


def launch(argv: Sequence[str]) -> None:
    """``ensemble-lab study``: read the study, then show it (--status, --dry_run) or run it with the chosen launcher."""
    from ensemble_lab.cli import slurm_launcher

    options, slurm_cli = parse_study_args(argv)
    forget_resolved()  # config files may have changed since an earlier study in this process
    study = load_spec(options.config, options.out)
    parallel = options.parallel or len(visible_gpus()) or 2
    if options.status:
        print_status(study.runs)
        return
    if options.dry_run:
        validate(study)
        if options.launcher == "slurm":
            slurm_launcher.print_arrays(study, slurm_cli)
        elif options.launcher == "local":
            env = local_env(0, parallel, visible_gpus())
            print(f"local: {parallel} runs at a time, each with OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, GPUs {visible_gpus() or 'none'}")
        print_runs(study.runs)
        return
    start = time.perf_counter()
    with InterruptWatch() as watch:
        try:
            if options.launcher == "slurm":  # before the seconds of parsing every run
                slurm_launcher.require_slurm()
            validate(study)  # a typo in the args: one error now, not one failed run after another
            if not options.rerun_changed:
                refuse_changed(study.runs)
            if options.launcher == "slurm":
                failed = slurm_launcher.run_slurm(study, slurm_cli, watch, wait=not options.no_wait)
                if failed is None:  # submitted, not waited for
                    return
            elif options.launcher == "local":
                failed = run_local(study.runs, parallel, watch)
            else:
                failed = run_sequential(study.runs, watch)
        except KeyboardInterrupt:
            print("\nstudy: interrupted; run the same command again to resume (finished runs are skipped)", file=sys.stderr, flush=True)
            raise SystemExit(INTERRUPTED) from None
    report(study, failed, time.perf_counter() - start)
