"""``ensemble-lab study --launcher slurm``: the study's runs as SLURM job arrays, through submitit.

Runs that need the same resources go in one array: a run's GPUs are its ``--trainer.devices`` (or
``slurm.gpus_per_node`` when that is auto), one task per GPU, ``--trainer.num_nodes`` nodes, so a
multi-GPU run trains with DDP inside its job (Lightning reads the SLURM environment). Students go in
arrays of their own that start after their teachers' arrays ended (``afterany``; a student whose
teacher failed records "teacher failed" without training). Each job is a ``StudyJob``: submitit
requeues it when preempted or near its time limit, and it resumes from ``checkpoints/last.ckpt``.
"""

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ensemble_lab.errors import ConfigError, EnsembleLabError
from ensemble_lab.runs.interrupts import InterruptWatch
from ensemble_lab.study.job import LOG, StudyJob, read_record, write_record
from ensemble_lab.study.records import Run, move_aside
from ensemble_lab.study.spec import Study
from ensemble_lab.study.status import commands

#: study-level SLURM settings that are submitit parameters of the same name; others go to sbatch as they are
SUBMITIT_KEYS = ("partition", "cpus_per_task", "mem", "account", "qos", "constraint", "exclude", "array_parallelism", "setup")
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED"}
POLL_S = 60.0  # seconds between looks at the queue while waiting


def minutes(value: Any) -> int:
    """A time limit as minutes: an int, or "[D-]HH:MM:SS" / "HH:MM" / "MM" as sbatch writes it."""
    if isinstance(value, int) and value > 0:
        return value
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value))
    if not match:
        raise ConfigError(f"slurm time {value!r}: give minutes (720) or [D-]HH:MM:SS (12:00:00)")
    days, first, second, third = (int(g) if g else 0 for g in match.groups())
    if match.group(4):  # H:M:S
        total = first * 60 + second + (third > 0)
    elif match.group(3):  # H:M (or D-H:M)
        total = first * 60 + second
    else:
        total = first * 60 if match.group(1) else first
    return max(1, days * 1440 + total)


def resources(run: Run, settings: Mapping[str, Any]) -> tuple[int, int]:
    """(GPUs per node, nodes) that ``run`` trains on, from its resolved trainer options."""
    config = run.resolved()
    nodes = int(config.get("trainer.num_nodes") or 1)
    if str(config.get("trainer.accelerator", "auto")) == "cpu":
        return 0, nodes
    devices = config.get("trainer.devices", "auto")
    if isinstance(devices, list):
        return len(devices), nodes
    if isinstance(devices, str) and re.fullmatch(r"\d+(,\d+)*,?", devices):
        return (int(devices) if "," not in devices else len([d for d in devices.split(",") if d])), nodes
    if isinstance(devices, int) and devices > 0:
        return devices, nodes
    return int(settings.get("gpus_per_node", 1)), nodes  # "auto" / -1: what the job is given


def parameters(study: Study, settings: Mapping[str, Any], gpus: int, nodes: int, size: int) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for an array of ``size`` runs on ``gpus`` GPUs × ``nodes`` nodes."""
    known = {"time", "gpus_per_node", "max_requeues", *SUBMITIT_KEYS}
    params: dict[str, Any] = {"job_name": f"ensemble-lab-{study.out.name}", "time": minutes(settings.get("time", 1440))}
    params.update(nodes=nodes, ntasks_per_node=max(gpus, 1), stderr_to_stdout=True)
    params.update({"gpus_per_node": gpus} if gpus else {})
    params.update({key: settings[key] for key in SUBMITIT_KEYS if key in settings})
    params["array_parallelism"] = min(size, int(params.get("array_parallelism", size)))
    if extra := {key: value for key, value in settings.items() if key not in known}:
        params["additional_parameters"] = extra
    return params


def arrays(study: Study, settings: Mapping[str, Any], runs: Sequence[Run]) -> list[tuple[int, dict[str, Any], list[Run]]]:
    """``runs`` grouped into job arrays: (wave, parameters, runs); wave 0 has no teacher, wave k + 1 learns from wave k."""
    wave: dict[str, int] = {}
    for run in study.runs:  # teachers come first
        wave[run.name] = 0 if run.teacher is None else wave[run.teacher] + 1
    groups: dict[tuple[int, int, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((wave[run.name], *resources(run, settings)), []).append(run)
    return [(k, parameters(study, settings, gpus, nodes, len(group)), group) for (k, gpus, nodes), group in sorted(groups.items())]


def _settings(study: Study, cli: Mapping[str, Any]) -> dict[str, Any]:
    return {**study.slurm, **cli}  # the command line wins over the study file


def print_arrays(study: Study, cli: Mapping[str, Any]) -> None:
    """``--dry_run --launcher slurm``: each job array's submitit parameters and its runs' commands."""
    settings = _settings(study, cli)
    todo = [run for run in study.runs if run.state() != "done"]
    for k, (wave, params, group) in enumerate(arrays(study, settings, todo), 1):
        after = "; starts after the arrays of the waves before it end (dependency afterany)" if wave else ""
        print(f"slurm array {k} ({len(group)} jobs, wave {wave}{after}): submitit.SlurmExecutor parameters {params}")
        for run in group:
            print(f"  job: {run.label}, log {run.run_dir / LOG}")
            for line in commands(run):
                print(f"    {line}")
    print(f"slurm: {len(todo)} of {len(study.runs)} runs to submit (max_requeues {settings.get('max_requeues', 3)}); the runs:")


def require_slurm() -> None:
    """Raise a one-line EnsembleLabError unless submitit is installed and SLURM's ``srun`` answers here."""
    try:
        import submitit  # an optional dependency: only --launcher slurm needs it
    except ImportError:
        raise EnsembleLabError("--launcher slurm needs submitit: pip install submitit (or use --launcher local)") from None
    if not submitit.SlurmExecutor.affinity() > 0:  # what submitit checks before it submits: srun on PATH
        raise EnsembleLabError(
            "--launcher slurm: SLURM is not available here (no `srun` on PATH); run the study on the cluster's login "
            "node, or use --launcher local or sequential (--dry_run shows the job arrays without SLURM)"
        )


def _queued(run: Run, folder: Any) -> Any:
    """The SLURM job that already holds ``run`` (recorded as submitted or running and still in the queue), else None."""
    import submitit  # an optional dependency: only --launcher slurm needs it

    record = read_record(run)
    if record.get("state") not in ("submitted", "running") or not record.get("job"):
        return None
    job: Any = submitit.SlurmJob(folder=folder, job_id=str(record["job"]))
    try:
        state = job.state
    except Exception:  # no sacct here: take it as gone
        return None
    return job if state.split()[0] in ACTIVE else None


def run_slurm(study: Study, cli: Mapping[str, Any], watch: InterruptWatch, wait: bool = True) -> list[str] | None:
    """Submit the runs that are not done as job arrays; wait for them (polling the queue), then say which failed.

    Returns the failed runs as "<method> seed <s> (why; log: ...)", or None when ``wait`` is False.
    """
    import submitit  # an optional dependency: only --launcher slurm needs it

    settings, folder = _settings(study, cli), study.out / ".submitit" / "%j"
    jobs: dict[Run, Any] = {}
    todo = []
    job: Any
    for run in study.runs:
        if run.state() == "done":
            print(f"study: {run.label}: done before, skipped ({run.run_dir / 'results.json'})", flush=True)
        elif (job := _queued(run, folder)) is not None:
            print(f"study: {run.label}: already queued as SLURM job {job.job_id}, not submitted again", flush=True)
            jobs[run] = job
        else:
            if run.state() == "changed":  # refuse_changed() stops the study otherwise
                print(f"study: {run.label}: arguments changed ({run.change()}); old run moved to {move_aside(run.run_dir)}", flush=True)
            todo.append(run)
    array_of: dict[str, list[str]] = {}  # method name -> ids of the arrays holding its runs
    for wave, params, group in arrays(study, settings, todo):
        teachers = {run.teacher for run in group if run.teacher is not None}
        after = sorted({job_id for name in teachers for job_id in array_of.get(name, [])})
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(settings.get("max_requeues", 3)))
        executor.update_parameters(**params, **({"dependency": "afterany:" + ":".join(after)} if after else {}))
        with executor.batch():
            submitted = [executor.submit(StudyJob(run, run.resolved())) for run in group]
        for run, job in zip(group, submitted):
            write_record(run, "submitted", job=job.job_id, log=str(run.run_dir / LOG))
            jobs[run] = job
            array_of.setdefault(run.name, []).append(job.job_id.split("_")[0])
        print(f"study: submitted {len(group)} runs as SLURM job {submitted[0].job_id.split('_')[0]} ({params})", flush=True)
    if not wait:
        print("study: submitted; follow the runs with --status, and run the same command when they are done for the report")
        return None
    while not all(job.done() for job in jobs.values()):
        watch.check()
        time.sleep(POLL_S)
    failed = []
    for run, job in jobs.items():
        if run.status() != "done":
            record = read_record(run)
            why = record.get("error") if record.get("state") == "failed" else f"SLURM job {job.job_id} ended {job.state}"
            failed.append(f"{run.label} ({why}; log: {run.run_dir / LOG})")
    return failed
