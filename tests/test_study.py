"""`ensemble-lab study`: a tiny digits grid run, skipped, resumed; the study file's checks."""

import json
import signal
import sys
from pathlib import Path

import pytest
import yaml

from ensemble_lab.cli import main
from ensemble_lab.errors import ConfigError
from ensemble_lab.study import load_study
from tests.conftest import REPO, TINY_TRAINER

DIGITS = REPO / "configs" / "digits"


def write_study(path: Path, methods: dict, seeds=(1,), args=TINY_TRAINER) -> Path:
    path.write_text(yaml.safe_dump({"seeds": list(seeds), "args": list(args), "methods": methods}))
    return path


@pytest.mark.slow
def test_study_runs_skips_resumes_and_reports(tmp_path, capsys):
    study = write_study(
        tmp_path / "tiny.yaml",
        {
            "single": {"config": str(DIGITS / "single.yaml")},
            "be": {"config": str(DIGITS / "batch_ensemble.yaml"), "args": ["--model.num_members=2"]},
            "broken": {"config": str(DIGITS / "single.yaml"), "args": ["--model.hidden_sizes=oops"]},
        },
    )
    out = tmp_path / "out"
    command = ["study", "--config", str(study), "--out", str(out)]

    # 1st call: the good runs finish, the broken one is reported, the study exits non-zero at the end
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "1 of 3 runs failed: broken seed 1" in captured.err
    assert "### digits (id)" in captured.out and "| BatchEnsemble | 2 |" in captured.out and "| SingleModel | 1 |" in captured.out
    for name in ("single", "be"):
        run = out / name / "seed_1"
        results = json.loads((run / "results.json").read_text())
        assert results["seed"] == 1 and (run / "checkpoints" / "last.ckpt").exists() and (run / "figures").is_dir()
    assert (out / "report.md").exists() and (out / "report.json").exists()
    first = (out / "be" / "seed_1" / "results.json").stat().st_mtime_ns

    # 2nd call: finished runs are skipped, not repeated
    with pytest.raises(SystemExit):
        main(command)
    captured = capsys.readouterr()
    assert captured.out.count("done before, skipped") == 2 and "### digits (id)" in captured.out
    assert (out / "be" / "seed_1" / "results.json").stat().st_mtime_ns == first

    # an interrupted run (last.ckpt, no results.json) is resumed from its checkpoint
    (out / "be" / "seed_1" / "results.json").unlink()
    with pytest.raises(SystemExit):
        main(command)
    captured = capsys.readouterr()
    last = out / "be" / "seed_1" / "checkpoints" / "last.ckpt"
    assert f"be seed 1: resuming from {last}" in captured.out
    assert yaml.safe_load((out / "be" / "seed_1" / "config.yaml").read_text())["ckpt_path"] == str(last)
    assert json.loads((out / "be" / "seed_1" / "results.json").read_text())["num_members"] == 2


def test_dry_run_lists_states_without_running(tmp_path, capsys):
    study = write_study(tmp_path / "s.yaml", {"de": {"config": str(DIGITS / "deep_ensemble.yaml")}}, seeds=(1, 2, 3))
    out = tmp_path / "out"
    (out / "de" / "seed_1").mkdir(parents=True)
    (out / "de" / "seed_1" / "results.json").write_text("{}")
    (out / "de" / "seed_2" / "checkpoints").mkdir(parents=True)
    (out / "de" / "seed_2" / "checkpoints" / "last.ckpt").write_bytes(b"")
    main(["study", "--config", str(study), "--out", str(out), "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[::2]] == ["done", "resume", "new"]
    assert "--seed_everything=3" in lines[5] and "--ckpt_path" not in lines[5]
    assert f"--ckpt_path={out / 'de' / 'seed_2' / 'checkpoints' / 'last.ckpt'}" in lines[3]
    assert not (out / "de" / "seed_3").exists()


def test_ctrl_c_stops_the_study(tmp_path, monkeypatch, capsys):
    """Lightning turns Ctrl-C into sys.exit(1) with SIGINT ignored; the study must stop, not go on."""
    calls = []

    def interrupted_fit(args):
        calls.append(args)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(1)

    monkeypatch.setattr("ensemble_lab.cli.main", interrupted_fit)
    study = write_study(tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml")}}, seeds=(1, 2))
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--config", str(study), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 130 and len(calls) == 1
    assert signal.getsignal(signal.SIGINT) is before
    assert "run the same command again to resume" in capsys.readouterr().err


def test_relative_config_paths_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = load_study(REPO / "configs" / "study" / "digits.yaml")
    assert {r.name for r in runs} == {"single", "mc_dropout", "deep_ensemble", "batch_ensemble"}
    assert sorted({r.seed for r in runs}) == [42, 69, 123] and len(runs) == 12
    assert all(r.config.parent == DIGITS for r in runs)  # relative to the study file
    assert runs[0].run_dir == tmp_path / "studies" / "digits" / "single" / "seed_42"
    for name in ("mnist", "cifar10"):
        paper = load_study(REPO / "configs" / "study" / f"{name}.yaml", out=tmp_path / name)
        assert sorted({r.seed for r in paper}) == [42, 69, 123, 456, 789] and len(paper) == 20
        assert {r.config.name for r in paper} == {"single.yaml", "mc_dropout.yaml", "deep_ensemble.yaml", "batch_ensemble.yaml"}


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"seeds": [1]}, "needs a 'methods' mapping"),
        ({"seeds": [], "methods": {"a": {"config": "x"}}}, "'seeds' must be a non-empty list of integers"),
        ({"seeds": [1], "methods": {"a": {"config": "nowhere.yaml"}}}, "config 'nowhere.yaml' not found"),
        ({"seeds": [1], "methods": {"a/b": {"config": "x"}}}, "a method name is a directory name"),
        ({"seeds": [1], "methods": {"a": {"config": "x", "arg": []}}}, "must be a mapping with keys"),
        ({"seeds": [1], "method": {}}, "needs a 'methods' mapping"),
        ({"seeds": [1], "methods": {"a": {"config": "x"}}, "extra": 1}, "unknown keys"),
    ],
)
def test_bad_study_files(tmp_path, spec, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", ".")):
        load_study(path)
