"""`ensemble-lab study` launchers: local processes match the sequential run and survive a SIGKILL; SLURM job arrays
(with sbatch faked); --dry_run, --status; teachers before students; the connectivity step and the report's arguments."""

import json
import os
import signal
import socket
import sys
from pathlib import Path

import cloudpickle
import pytest
import submitit
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from ensemble_lab.cli import main
from ensemble_lab.errors import ConfigError
from ensemble_lab.study.job import StudyJob
from ensemble_lab.study.launchers.local import local_env
from ensemble_lab.study.launchers.slurm import minutes
from ensemble_lab.study.spec import load_spec
from tests.conftest import REPO, TINY_TRAINER, reproducible

DIGITS = REPO / "configs" / "digits"
SLURM_TRAINER = [a for a in TINY_TRAINER if "accelerator" not in a] + ["--trainer.accelerator=auto"]


class KillOnce(Callback):
    """SIGKILLs its own process when the post-fit test starts (after last.ckpt is saved), once: while ``flag_file`` is absent."""

    def __init__(self, flag_file: str) -> None:
        self.flag_file = Path(flag_file)

    def on_test_start(self, *args) -> None:
        if not self.flag_file.exists():
            self.flag_file.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def write_study(path: Path, methods: dict, seeds=(1,), args=TINY_TRAINER, **keys) -> Path:
    path.write_text(yaml.safe_dump({"seeds": list(seeds), "args": list(args), "methods": methods, **keys}))
    return path


def results_of(out: Path, name: str) -> dict:
    """A run's results.json with the study directory written as OUT (two studies differ in it only) and no measured costs."""
    text = (out / name / "seed_1" / "results.json").read_text().replace(str(out), "OUT")
    return reproducible(json.loads(text))


@pytest.mark.slow
def test_local_parallel_matches_sequential_and_resumes_a_killed_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # 2 cores: 1 thread per local run
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the children load KillOnce from this file
    monkeypatch.chdir(REPO)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sequential runs use the local runs' thread count: the same float reductions
    methods = {"be": {"config": str(DIGITS / "batch_ensemble.yaml"), "args": ["--model.num_members=2"]}}
    try:
        main(["study", "--config", str(write_study(tmp_path / "seq.yaml", methods)), "--out", str(tmp_path / "seq")])
    finally:
        torch.set_num_threads(threads)
    kill = {"class_path": "tests.study.test_launchers.KillOnce", "init_args": {"flag_file": str(tmp_path / "killed")}}
    methods["killed"] = {"config": str(DIGITS / "single.yaml"), "args": [f"--trainer.callbacks={json.dumps([kill])}"]}
    out = tmp_path / "par"
    command = [
        "study",
        "--config",
        str(write_study(tmp_path / "par.yaml", methods)),
        "--out",
        str(out),
        "--launcher",
        "local",
        "--parallel",
        "2",
    ]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    captured = capsys.readouterr()
    killed = out / "killed" / "seed_1"
    assert exit_info.value.code == 2 and (tmp_path / "killed").exists()
    assert f"1 of 2 runs failed: killed seed 1 (killed by signal 9; log: {killed / 'study.log'})" in captured.err
    assert results_of(out, "be") == results_of(tmp_path / "seq", "be")
    assert "OMP_NUM_THREADS=1" in (out / "be" / "seed_1" / "study.log").read_text()
    assert json.loads((killed / "study_run.json").read_text())["state"] == "failed" and not (killed / "results.json").exists()
    main(["study", "--config", str(tmp_path / "par.yaml"), "--out", str(out), "--status"])
    status = capsys.readouterr().out
    assert (
        "failed  killed seed 1" in status and f"killed by signal 9 (log: {killed / 'study.log'})" in status and "1 done, 1 failed" in status
    )

    main(command)  # again: the killed run resumes from its last.ckpt, the others are skipped
    captured = capsys.readouterr()
    assert captured.out.count("done before, skipped") == 1 and "be seed 1: in its own process" not in captured.out
    assert yaml.safe_load((killed / "config.resume-1.yaml").read_text())["ckpt_path"] == str(killed / "checkpoints" / "last.ckpt")
    assert (killed / "results.json").exists() and not (out / "be" / "seed_1" / "config.resume-1.yaml").exists()
    assert json.loads((killed / "study_run.json").read_text())["state"] == "done" and "| killed (SingleModel) |" in captured.out


def test_local_env_pins_gpus_and_splits_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert local_env(0, 4, ["2", "5"]) == {"CUDA_VISIBLE_DEVICES": "2", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert local_env(3, 4, ["2", "5"])["CUDA_VISIBLE_DEVICES"] == "5"
    assert local_env(1, 32, [])["CUDA_VISIBLE_DEVICES"] == "" and local_env(1, 32, [])["OMP_NUM_THREADS"] == "1"
    assert [minutes(v) for v in (90, "90", "2:00:00", "1-00:00:00", "1:30", "0:00:30")] == [90, 90, 120, 1440, 90, 1]


@pytest.fixture
def fake_sbatch(monkeypatch):
    """submitit's SLURM submission without a cluster: each sbatch script is kept, its job id is 1000 + k."""
    scripts: list[str] = []

    def submission(self, path: Path) -> list[str]:
        scripts.append(Path(path).read_text())
        return [sys.executable, "-c", f"print('Submitted batch job {1000 + len(scripts)}')"]

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    monkeypatch.setattr(submitit.SlurmExecutor, "_make_submission_command", submission)
    return scripts


def slurm_study(tmp_path: Path) -> Path:
    methods = {
        "student": {"config": str(DIGITS / "batch_ensemble.yaml"), "teacher": "de"},  # listed first, runs after its teacher
        "de": {"config": str(DIGITS / "deep_ensemble.yaml")},
        "single": {"config": str(DIGITS / "single.yaml"), "connectivity": False},
        "big": {"config": str(DIGITS / "single.yaml"), "args": ["--trainer.devices=4"], "connectivity": False},
    }
    slurm = {"partition": "gpu", "time": "2:00:00", "account": "lab"}
    return write_study(tmp_path / "s.yaml", methods, seeds=(1, 2), args=SLURM_TRAINER, slurm=slurm, connectivity={"points": 5})


def quick_check(argv) -> dict:
    """Stands in for the CLI's parse (seconds per run) in the SLURM tests: the trainer options the launcher reads."""
    devices = next((int(a.split("=")[1]) for a in argv if a.startswith("--trainer.devices=")), "auto")
    return {"trainer": {"accelerator": "auto", "devices": devices, "num_nodes": 1}, "argv": [a for a in argv if "logger" not in a]}


def test_slurm_job_arrays_with_a_fake_sbatch(tmp_path, capsys, fake_sbatch, monkeypatch):
    monkeypatch.setattr("ensemble_lab.study.records.check_arguments", quick_check)
    study, out = slurm_study(tmp_path), tmp_path / "out"
    command = [
        "study",
        "--config",
        str(study),
        "--out",
        str(out),
        "--launcher",
        "slurm",
        "--slurm.gpus_per_node",
        "2",
        "--slurm.mail_type=END",
    ]
    main([*command, "--dry_run"])
    dry = capsys.readouterr().out
    assert not fake_sbatch and not (out / ".submitit").exists()
    assert "slurm array 1 (4 jobs, wave 0)" in dry and "slurm array 3 (2 jobs, wave 1; starts after" in dry
    assert f"--model.distillation.teacher={out / 'de' / 'seed_2' / 'checkpoints' / 'last.ckpt'}" in dry
    assert f"ensemble-lab connectivity --config {out / 'de' / 'seed_1' / 'config.yaml'}" in dry and "--points 5" in dry

    main([*command, "--no_wait"])
    assert len(fake_sbatch) == 3  # wave 0 on 2 GPUs (de, single), wave 0 on 4 GPUs (big), wave 1 (student, after de)
    two, four, students = (
        dict(line[len("#SBATCH --") :].split("=", 1) for line in s.splitlines() if "=" in line and line.startswith("#SBATCH"))
        for s in fake_sbatch
    )
    expected = {"partition": "gpu", "time": "120", "account": "lab", "nodes": "1", "mail-type": "END", "job-name": "ensemble-lab-out"}
    assert {k: two[k] for k in expected} == expected and {k: four[k] for k in expected} == expected
    assert (two["gpus-per-node"], two["ntasks-per-node"], two["array"]) == ("2", "2", "0-3%4")
    assert (four["gpus-per-node"], four["ntasks-per-node"], four["array"]) == ("4", "4", "0-1%2")
    assert students["dependency"] == "afterany:1001" and students["array"] == "0-1%2" and "dependency" not in two
    jobs = {}
    for pickle in sorted((out / ".submitit").rglob("*_submitted.pkl")):
        with open(pickle, "rb") as f:
            job = cloudpickle.load(f).function
        jobs[pickle.name.split("_submitted")[0]] = job.run
    assert {k: (r.name, r.seed) for k, r in jobs.items()} == {
        "1001_0": ("de", 1), "1001_1": ("de", 2), "1001_2": ("single", 1), "1001_3": ("single", 2),
        "1002_0": ("big", 1), "1002_1": ("big", 2), "1003_0": ("student", 1), "1003_1": ("student", 2),
    }  # fmt: skip
    student = jobs["1003_1"]
    assert f"--model.distillation.teacher={out / 'de' / 'seed_2' / 'checkpoints' / 'last.ckpt'}" in student.fit_args(resume=False)
    assert student.connectivity_args()[-2:] == ["--points", "5"] and jobs["1001_2"].connectivity is None
    requeued = StudyJob(student).checkpoint()  # preempted or out of time: the same run again (it resumes from last.ckpt)
    assert isinstance(requeued, submitit.helpers.DelayedSubmission) and requeued.function.run == student
    record = json.loads((out / "student" / "seed_1" / "study_run.json").read_text())
    assert record["state"] == "submitted" and record["job"] == "1003_0"
    capsys.readouterr()
    main([*command[:5], "--status"])
    status = capsys.readouterr().out
    assert "pending  student seed 1" in status and "queued as SLURM job 1003_0" in status and "8 pending" in status


def test_status_states(tmp_path, capsys):
    study = write_study(tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml")}}, seeds=(1, 2, 3, 4, 5))
    out = tmp_path / "out"
    runs = load_spec(study, out).runs
    record = {"argv": runs[0].fit_args(False), "config": runs[0].resolved(), "host": socket.gethostname()}
    for run, extra in zip(
        runs, [{"state": "done"}, {"state": "failed", "error": "exit status 1", "log": "L"}, {"state": "running", "pid": os.getpid()}]
    ):
        run.run_dir.mkdir(parents=True)
        run.record.write_text(json.dumps({**record, "config": run.resolved(), **extra}))
    (runs[0].run_dir / "results.json").write_text("{}")
    (runs[3].run_dir / "checkpoints").mkdir(parents=True)
    (runs[3].run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    runs[3].record.write_text(
        json.dumps({**record, "config": {**runs[3].resolved(), "model.init_args.made_up": 1}, "state": "running", "pid": 0})
    )
    main(["study", "--config", str(study), "--out", str(out), "--status"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:5]] == ["done", "failed", "running", "changed", "pending"]
    assert lines[1].endswith("exit status 1 (log: L)") and "-> (unset)" in lines[3] and lines[4].endswith("not started")


def test_teachers_first_and_bad_teachers(tmp_path):
    spec = {"s2": {"config": str(DIGITS / "single.yaml"), "teacher": "s1"}, "s1": {"config": str(DIGITS / "single.yaml"), "teacher": "t"}}
    spec["t"] = {"config": str(DIGITS / "deep_ensemble.yaml")}
    runs = load_spec(write_study(tmp_path / "a.yaml", spec), tmp_path / "out").runs
    assert [r.name for r in runs] == ["t", "s1", "s2"] and runs[2].teacher_dir == tmp_path / "out" / "s1" / "seed_1"
    spec["t"]["teacher"] = "s2"
    with pytest.raises(ConfigError, match=r"teachers form a cycle \(s1 -> t -> s2 -> s1\)"):
        load_spec(write_study(tmp_path / "b.yaml", spec))
    spec["t"]["teacher"] = "nobody"
    with pytest.raises(ConfigError, match="teacher 'nobody' is not a method of this study"):
        load_spec(write_study(tmp_path / "c.yaml", spec))
    with pytest.raises(ConfigError, match="connectivity must be false, true or a mapping"):
        load_spec(write_study(tmp_path / "d.yaml", {"a": {"config": str(DIGITS / "single.yaml"), "connectivity": {"points": 1}}}))


@pytest.mark.slow
def test_connectivity_step_failed_teacher_and_report_args(tmp_path, capsys, monkeypatch):
    calls: list[list[str]] = []

    def connectivity(argv: list[str]) -> None:  # stands in for `ensemble-lab connectivity`
        calls.append(argv)
        (Path(argv[argv.index("--ckpt_path") + 1]).parent.parent / "connectivity.json").write_text("{}")

    reports: list[list[str]] = []
    monkeypatch.setattr("ensemble_lab.connectivity.command.connectivity_main", connectivity)
    monkeypatch.setattr("ensemble_lab.study.main.report_main", lambda argv: reports.append(list(argv)))
    methods = {
        "ok": {"config": str(DIGITS / "single.yaml")},
        "student": {"config": str(DIGITS / "single.yaml"), "teacher": "teacher", "connectivity": False},
        "teacher": {"config": str(DIGITS / "single.yaml"), "args": ["--model.optimizer.lr=1e30"]},  # its loss turns NaN
    }
    study = write_study(tmp_path / "s.yaml", methods, connectivity={"points": 3, "set": "digits"}, report=["--digits", 2])
    out = tmp_path / "out"
    command = ["study", "--config", str(study), "--out", str(out)]
    with pytest.raises(SystemExit):
        main(command)
    captured = capsys.readouterr()
    ok, student = out / "ok" / "seed_1", out / "student" / "seed_1"
    assert calls == [
        ["--config", str(ok / "config.yaml"), "--ckpt_path", str(ok / "checkpoints" / "last.ckpt"), "--points", "3", "--set", "digits"]
    ]
    assert "student seed 1 (teacher failed: teacher seed 1 did not finish)" in captured.err and not (student / "checkpoints").exists()
    assert json.loads((student / "study_run.json").read_text())["state"] == "failed"
    assert reports == [[str(ok / "results.json"), "--out", str(out), "--digits", "2"]]

    (ok / "connectivity.json").unlink()  # results.json but no connectivity.json: only the connectivity step runs
    fitted = (ok / "results.json").stat().st_mtime_ns
    with pytest.raises(SystemExit):
        main(command)
    assert "ok seed 1: running its connectivity step" in capsys.readouterr().out
    assert len(calls) == 2 and (ok / "connectivity.json").exists() and (ok / "results.json").stat().st_mtime_ns == fitted


@pytest.mark.slow
def test_a_moved_study_directory_still_matches_its_students_records(tmp_path):
    methods = {"teacher": {"config": str(DIGITS / "single.yaml")}, "student": {"config": str(DIGITS / "single.yaml"), "teacher": "teacher"}}
    study = write_study(tmp_path / "s.yaml", methods, seeds=(1, 2))
    main(["study", "--config", str(study), "--out", str(tmp_path / "out")])
    (tmp_path / "out").rename(tmp_path / "moved")
    runs = load_spec(study, tmp_path / "moved").runs
    assert [(r.name, r.state()) for r in runs] == [("teacher", "done")] * 2 + [("student", "done")] * 2
    recorded = json.loads((tmp_path / "moved" / "student" / "seed_2" / "study_run.json").read_text())["config"]
    assert recorded["model.init_args.distillation.teacher"].startswith(str(tmp_path / "out"))  # the record keeps the old path
    # another teacher is still a change
    methods["other"], methods["student"]["teacher"] = {"config": str(DIGITS / "single.yaml")}, "other"
    student = next(r for r in load_spec(write_study(tmp_path / "s.yaml", methods, seeds=(1, 2)), tmp_path / "moved").runs if r.name == "student")
    assert "model.init_args.distillation.teacher: teacher/seed_1/checkpoints/last.ckpt -> other/seed_1/checkpoints/last.ckpt" in student.change()


@pytest.mark.parametrize("status, stops", [(130, True), (143, True), (1, False), (None, False)])
def test_a_run_stopped_by_ctrl_c_or_sigterm_stops_the_study(monkeypatch, status, stops):
    """A fit that exits 143 (SIGTERM) was stopped, not failed: the sequential study must not go on to the next run."""
    from ensemble_lab.study import job as study_job

    def stopped(argv):
        raise SystemExit(status)

    monkeypatch.setattr(study_job, "run_lightning_cli", stopped)
    if stops:
        with pytest.raises(KeyboardInterrupt):
            study_job._call(["fit"], in_lightning=True)
    else:
        assert study_job._call(["fit"], in_lightning=True) == (None if status is None else f"exit status {status}")


def test_slurm_launcher_without_slurm_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: -1))  # what submitit sees without srun
    study, out = write_study(tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml")}}), tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--config", str(study), "--out", str(out), "--launcher", "slurm"])
    [line] = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and "SLURM is not available here" in line and "--launcher local" in line
    assert not out.exists()
    main(["study", "--config", str(study), "--out", str(out), "--launcher", "slurm", "--dry_run"])  # needs no SLURM
    assert "slurm array 1 (1 jobs, wave 0)" in capsys.readouterr().out and not out.exists()


@pytest.mark.parametrize(
    "keys, message",
    [
        # photo_patches is the digits datamodule's OOD set: no labels of the training classes to walk on
        ({"connectivity": {"set": "photo_patches"}}, "connectivity: --set 'photo_patches' is not a labelled set of DigitsDataModule; "),
        ({"report": ["--preset", "nope"]}, "the study's 'report' arguments ['--preset', 'nope']: argument --preset: invalid choice: 'nope'"),
        ({"report": ["--digits", "20"]}, "the study's 'report' arguments ['--digits', '20']: --digits must be between 0 and 12"),
        ({"report": ["--bogus"]}, "the study's 'report' arguments ['--bogus']: unrecognized arguments: --bogus"),
    ],
)
def test_a_bad_step_option_stops_the_study_before_any_run(tmp_path, capsys, keys, message):
    study = write_study(tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml")}}, **keys)
    out = tmp_path / "out"
    for extra in ([], ["--dry_run"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["study", "--config", str(study), "--out", str(out), *extra])
        captured = capsys.readouterr()
        [line] = captured.err.splitlines()
        assert exit_info.value.code == 2 and message in line and "running" not in captured.out
        assert not out.exists()  # nothing trained, nothing written


def test_a_failed_step_records_its_reason_for_status(tmp_path, capsys, monkeypatch):
    """The connectivity step's one-line error is what study_run.json and --status say, not "exit status 2"."""
    from ensemble_lab.study import job as study_job
    from ensemble_lab.study.status import run_state

    def fitted(run, resume):  # stands in for fit + test: a finished run
        (run.run_dir / "results.json").write_text("{}")
        (run.run_dir / "checkpoints").mkdir()
        (run.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")

    def connectivity(argv: list[str]) -> None:  # stands in for `ensemble-lab connectivity` refusing the run
        raise ConfigError("--points 3: the walk is too short")

    monkeypatch.setattr(study_job, "execute", fitted)
    monkeypatch.setattr("ensemble_lab.connectivity.command.connectivity_main", connectivity)
    study = write_study(tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml")}}, connectivity={"points": 3})
    [run] = load_spec(study, tmp_path / "out").runs
    assert study_job.run_job(run) == "connectivity: --points 3: the walk is too short"
    assert json.loads(run.record.read_text())["error"] == "connectivity: --points 3: the walk is too short"
    assert run_state(run) == ("failed", "connectivity: --points 3: the walk is too short")
    main(["study", "--config", str(study), "--out", str(tmp_path / "out"), "--status"])
    assert "failed  single seed 1" in capsys.readouterr().out
