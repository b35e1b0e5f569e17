"""`ensemble-lab study`: a tiny digits grid run, skipped, resumed, interrupted, changed; the study file's checks."""

import json
import re
import signal
from pathlib import Path

import pytest
import yaml

from ensemble_lab.cli import main
from ensemble_lab.errors import ConfigError
from ensemble_lab.study.args import describe_change
from ensemble_lab.study.spec import load_study
from tests.conftest import REPO, TINY_TRAINER
from tests.run_helpers import sigint_once

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
            # valid options, so it passes the study's check, but its loss turns NaN in training
            "broken": {"config": str(DIGITS / "single.yaml"), "args": ["--model.optimizer.lr=1e30"]},
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
    assert "### digits (id)" in captured.out and "| be (BatchEnsemble) | 2 |" in captured.out and "| single (SingleModel) | 1 |" in captured.out
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

    # an interrupted run (last.ckpt, no results.json) is resumed from its checkpoint, in its directory
    run = out / "be" / "seed_1"
    config = (run / "config.yaml").read_bytes()
    (run / "results.json").unlink()
    with pytest.raises(SystemExit):
        main(command)
    captured = capsys.readouterr()
    assert f"be seed 1: resuming from {run / 'checkpoints' / 'last.ckpt'}" in captured.out
    assert (run / "config.yaml").read_bytes() == config
    assert yaml.safe_load((run / "config.resume-1.yaml").read_text())["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")
    assert json.loads((run / "results.json").read_text())["num_members"] == 2
    assert sorted(p.name for p in (out / "be").iterdir()) == ["seed_1"]  # no stray version_N


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


@pytest.mark.slow
def test_ctrl_c_stops_the_study(tmp_path, capsys, sigint_enabled):
    """Lightning catches the KeyboardInterrupt and exits with status 1; the study must stop, not go on."""
    flag = tmp_path / "sigint-sent"
    study = write_study(
        tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml"), "args": [sigint_once("fit", flag)]}}, seeds=(1, 2)
    )
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--config", str(study), "--out", str(out)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 130 and flag.exists()
    assert not (out / "single" / "seed_2").exists() and "seed 2" not in captured.out  # the next run never started
    assert "FAILED" not in captured.out and "failed" not in captured.err
    assert "study: interrupted; run the same command again to resume" in captured.err
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_ctrl_c_in_the_post_fit_test_then_resume_keeps_config_yaml(tmp_path, capsys, sigint_enabled):
    """Interrupted in its post-fit test, a run has last.ckpt but no results.json; the next call resumes it in
    its directory: config.yaml stays as it was, the resume's config goes to config.resume-1.yaml."""
    flag = tmp_path / "sigint-sent"
    study = write_study(tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml"), "args": [sigint_once("test", flag)]}})
    out, run = tmp_path / "out", tmp_path / "out" / "single" / "seed_1"
    command = ["study", "--config", str(study), "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 130 and flag.exists()
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "results.json").exists()
    config = (run / "config.yaml").read_bytes()
    capsys.readouterr()

    main(command)  # the flag file exists: no second interrupt
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out
    assert (run / "config.yaml").read_bytes() == config
    assert yaml.safe_load((run / "config.resume-1.yaml").read_text())["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")
    assert (run / "results.json").exists() and not (run / "config.resume-2.yaml").exists()
    assert sorted(p.name for p in (out / "single").iterdir()) == ["seed_1"]


@pytest.mark.slow
def test_changed_arguments_are_refused_then_rerun_aside(tmp_path, capsys):
    methods = {"single": {"config": str(DIGITS / "single.yaml")}}
    study, out = write_study(tmp_path / "s.yaml", methods), tmp_path / "out"
    run = out / "single" / "seed_1"
    command = ["study", "--config", str(study), "--out", str(out)]
    main(command)
    recorded = json.loads((run / "study_run.json").read_text())["argv"]
    assert recorded[:3] == ["fit", "--config", str(DIGITS / "single.yaml")] and "--trainer.limit_train_batches=3" in recorded
    results = (run / "results.json").read_bytes()
    capsys.readouterr()

    # the study's args change: the finished run is named with what differs, nothing runs or moves
    changed = [a.replace("limit_train_batches=3", "limit_train_batches=2") for a in TINY_TRAINER]
    write_study(study, methods, args=changed)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    # the value as the parser reads it: 3 -> 2, or 3.0 -> 2.0 where the option's type reads it as a float
    assert re.search(rf"study: single seed 1 \({re.escape(str(run))}\) was made with other arguments: trainer.limit_train_batches: 3(\.0)? -> 2(\.0)?\n", captured.err)
    assert "--rerun_changed" in captured.err and "running" not in captured.out
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before and (run / "results.json").read_bytes() == results

    main([*command, "--dry_run"])
    assert capsys.readouterr().out.split()[0] == "changed"

    # --rerun_changed: the old run is kept as seed_1.prev-1, the run starts afresh; the report has the new one only
    main([*command, "--rerun_changed"])
    captured = capsys.readouterr()
    assert f"old run moved to {out / 'single' / 'seed_1.prev-1'}" in captured.out
    assert (out / "single" / "seed_1.prev-1" / "results.json").read_bytes() == results
    assert "--trainer.limit_train_batches=2" in json.loads((run / "study_run.json").read_text())["argv"]
    assert json.loads((out / "report.json").read_text())[0]["runs"] == [str(run)]

    # a run without study_run.json (made before the study kept one) counts as matching: skipped
    (run / "study_run.json").unlink()
    write_study(study, methods)
    main(command)
    assert "done before, skipped" in capsys.readouterr().out


def states(dry_run_output: str) -> list[str]:
    """The state column of `study --dry_run` (its other lines are indented commands and differences)."""
    return [line.split()[0] for line in dry_run_output.splitlines() if line[:1] != " " or not line.startswith(" " * 9)]


@pytest.mark.slow
def test_an_edit_inside_a_method_config_file_marks_its_runs_changed(tmp_path, capsys):
    config = tmp_path / "single.yaml"
    config.write_text((DIGITS / "single.yaml").read_text())
    study = write_study(tmp_path / "s.yaml", {"single": {"config": str(config)}}, seeds=(1, 2))
    out = tmp_path / "out"
    command = ["study", "--config", str(study), "--out", str(out)]
    main(command)
    capsys.readouterr()
    main([*command, "--dry_run"])
    assert states(capsys.readouterr().out) == ["done", "done"]

    # same path, same arguments, another learning rate inside the file
    config.write_text(config.read_text().replace("lr: 0.003", "lr: 0.01"))
    main([*command, "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert states("\n".join(lines)) == ["changed", "changed"]
    assert lines[2].strip() == "differs from what it was made with: model.init_args.optimizer.init_args.lr: 0.003 -> 0.01"
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2 and "optimizer.init_args.lr: 0.003 -> 0.01" in capsys.readouterr().err


def test_interrupted_run_with_other_arguments_is_changed(tmp_path, capsys):
    study = write_study(tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml"), "args": ["--model.dropout=0.1"]}})
    out, run = tmp_path / "out", tmp_path / "out" / "single" / "seed_1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "config.yaml").write_text("old: config\n")
    [current] = load_study(study, out)
    old = [a for a in current.fit_args(resume=False) if a != "--model.dropout=0.1"] + ["--model.dropout=0.2", "--figures=false"]
    (run / "study_run.json").write_text(json.dumps({"argv": old}))
    command = ["study", "--config", str(study), "--out", str(out)]

    main([*command, "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["changed", str(run)] and "--ckpt_path" not in lines[1]
    # a record without a resolved config (older studies) is compared by its arguments
    assert lines[2].strip() == "differs from what it was made with: --model.dropout: 0.2 -> 0.1; dropped --figures=false"

    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2
    assert "single seed 1" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "study_run.json"]
    assert json.loads((run / "study_run.json").read_text())["argv"] == old


def test_describe_change():
    base = ["fit", "--config", "a.yaml", "--trainer.max_epochs=3", "--seed_everything=1"]
    placed = [*base, '--trainer.logger={"save_dir": "/x"}', "--checkpoint.dirpath=null", "--ckpt_path=/x/last.ckpt"]
    assert describe_change(base, placed) is None  # where the run lives is not a setting
    assert describe_change(base, ["fit", "--config", "a.yaml", "--trainer.max_epochs", "3", "--seed_everything=1"]) is None
    assert describe_change(base, [*base[:3], "--trainer.max_epochs=5", base[4]]) == "--trainer.max_epochs: 3 -> 5"
    assert describe_change(base, [*base[:2], "b.yaml", *base[3:], "--x=1"]) == "--config: a.yaml -> b.yaml; added --x=1"
    assert describe_change(base, [base[0], *base[3:]]) == "dropped --config=a.yaml"
    assert describe_change(["--a=1", "--b=2"], ["--b=2", "--a=1"]) == "the same arguments in another order: --b=2 --a=1"


@pytest.mark.parametrize("where", ["study", "method"])
def test_a_typo_in_the_args_stops_the_study_before_any_run(tmp_path, capsys, where):
    typo = "--trainer.max_epochz=3"
    methods = {
        "be": {"config": str(DIGITS / "batch_ensemble.yaml")},  # the study file lists methods sorted: be runs first
        "single": {"config": str(DIGITS / "single.yaml"), **({"args": [typo]} if where == "method" else {})},
    }
    study = write_study(tmp_path / "s.yaml", methods, args=[*TINY_TRAINER, *([typo] if where == "study" else [])])
    out = tmp_path / "out"
    for extra in ([], ["--dry_run"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["study", "--config", str(study), "--out", str(out), *extra])
        captured = capsys.readouterr()
        assert exit_info.value.code == 2 and not out.exists()
        first = "be" if where == "study" else "single"
        [line] = captured.err.splitlines()
        assert line.startswith(f"ensemble-lab: error: study run {first} seed 1 ({out / first / 'seed_1'}): unrecognized arguments: {typo}")
        assert "did you mean --trainer.max_epochs?" in line
        assert "running" not in captured.out and "Run the same command again" not in captured.err


def test_relative_config_paths_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = load_study(REPO / "configs" / "study" / "digits.yaml")
    methods = {"single", "mc_dropout", "deep_ensemble", "batch_ensemble", "low_rank", "packed", "mimo", "masksembles"}
    assert {r.name for r in runs} == methods
    assert sorted({r.seed for r in runs}) == [42, 69, 123] and len(runs) == 3 * len(methods)
    assert all(r.configs[0].parent == DIGITS for r in runs)  # relative to the study file
    assert runs[0].run_dir == tmp_path / "studies" / "digits" / "single" / "seed_42"
    for name in ("mnist", "cifar10"):
        paper = load_study(REPO / "configs" / "study" / f"{name}.yaml", out=tmp_path / name)
        assert sorted({r.seed for r in paper}) == [42, 69, 123, 456, 789] and len(paper) == 20
        assert {r.configs[0].name for r in paper} == {"single.yaml", "mc_dropout.yaml", "deep_ensemble.yaml", "batch_ensemble.yaml"}


def test_the_tabular_and_uci_studies(tmp_path):
    """The tabular study: 7 methods on each of the 3 bundled tables, each table's runs its own methods; the UCI
    study: seed s trains on split s ("{seed}" in an argument is replaced by the run's seed)."""
    runs = load_study(REPO / "configs" / "study" / "tabular.yaml", out=tmp_path / "tabular")
    assert len(runs) == 7 * 3 * 5
    for table in ("diabetes", "breast_cancer", "wine"):
        own = [r for r in runs if r.name.startswith(f"{table}.")]
        assert len(own) == 7 * 5 and all(f"--data.dataset={table}" in r.overrides for r in own)
    uci = load_study(REPO / "configs" / "study" / "uci.yaml", out=tmp_path / "uci")
    assert {r.seed for r in uci} == set(range(20))
    assert all(f"--data.split={r.seed}" in r.overrides and not any("{seed}" in a for a in r.overrides) for r in uci)
    assert {r.seed for r in load_study(REPO / "configs" / "study" / "uci_protein.yaml", out=tmp_path / "p")} == set(range(5))


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
        ({"seeds": [1, 2, 1], "methods": {"a": {"config": "x"}}}, "lists .1. more than once"),
        ({"seeds": [1], "methods": {"..": {"config": "x"}}}, "a method name is a directory name"),
    ],
)
def test_bad_study_files(tmp_path, spec, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", ".")):
        load_study(path)


def test_a_method_written_twice_is_refused_not_silently_replaced(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"seeds: [1]\nmethods:\n  a:\n    config: {DIGITS / 'single.yaml'}\n  a:\n    config: {DIGITS / 'batch_ensemble.yaml'}\n")
    with pytest.raises(ConfigError, match=r"'a' is given twice in one mapping \(line 5\)"):
        load_study(path)


def test_options_added_since_a_run_was_recorded_do_not_mark_it_changed(tmp_path, capsys):
    """A run recorded before an option existed holds no key for it; today's default is what it trained with."""
    study = write_study(tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml")}})
    out, run = tmp_path / "out", tmp_path / "out" / "single" / "seed_1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    [current] = load_study(study, out)
    today = current.resolved()
    added = ["model.init_args.distillation", "model.init_args.repulsion", "calibration", "eval_sets_every"]  # options of later versions
    assert set(added) <= set(today)
    old_config = {k: v for k, v in today.items() if k not in added}
    record = {"argv": current.fit_args(resume=False), "config": old_config}
    (run / "study_run.json").write_text(json.dumps(record))
    command = ["study", "--config", str(study), "--out", str(out), "--dry_run"]
    main(command)
    assert states(capsys.readouterr().out) == ["resume"]

    # a value that did change is still named, and only it
    (run / "study_run.json").write_text(json.dumps({**record, "config": {**old_config, "model.init_args.dropout": 0.3}}))
    main(command)
    lines = capsys.readouterr().out.splitlines()
    assert states("\n".join(lines)) == ["changed"]
    assert lines[2].strip() == f"differs from what it was made with: model.init_args.dropout: 0.3 -> {json.dumps(today['model.init_args.dropout'])}"


def test_a_study_directory_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"seeds": [1], "out": str(tmp_path / "taken"), "methods": {"a": {"config": str(DIGITS / "single.yaml")}}}))
    with pytest.raises(ConfigError, match="is a file; give another 'out'"):
        load_study(path)


def test_students_of_a_changed_or_retrained_teacher_are_changed(tmp_path, capsys):
    """A student learns from its teacher's weights: a teacher made with other arguments (or trained again) changes
    its students, and theirs, in --dry_run and --status alike."""
    import hashlib

    from ensemble_lab.study.job import write_record

    single = str(DIGITS / "single.yaml")
    methods = {"t": {"config": single}, "s": {"config": single, "teacher": "t"}, "s2": {"config": single, "teacher": "s"}}
    study, out = write_study(tmp_path / "s.yaml", methods), tmp_path / "out"
    for run in load_study(study, out):  # three finished runs, recorded as the study records them
        (run.run_dir / "checkpoints").mkdir(parents=True)
        (run.run_dir / "checkpoints" / "last.ckpt").write_bytes(f"{run.name} weights".encode())
        (run.run_dir / "results.json").write_text("{}")
        write_record(run, "done")
    recorded = json.loads((out / "s" / "seed_1" / "study_run.json").read_text())
    assert recorded["teacher_checkpoint"] == hashlib.sha256(b"t weights").hexdigest()
    command = ["study", "--config", str(study), "--out", str(out)]
    main([*command, "--dry_run"])
    assert states(capsys.readouterr().out) == ["done"] * 3

    # the teacher's args change: it, its student and its student's student are changed
    dropout = yaml.safe_load((DIGITS / "single.yaml").read_text())["model"]["init_args"]["dropout"]
    write_study(study, {**methods, "t": {"config": single, "args": ["--model.dropout=0.3"]}})
    main([*command, "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert states("\n".join(lines)) == ["changed"] * 3
    assert f"differs from what it was made with: teacher t: model.init_args.dropout: {dropout} -> 0.3" in lines[5]
    assert f"differs from what it was made with: teacher teacher t: model.init_args.dropout: {dropout} -> 0.3" in lines[8]
    main([*command, "--status"])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[:3]] == ["changed"] * 3
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2 and "3 of 3 runs were made with other arguments" in capsys.readouterr().err

    # the same arguments, but the teacher trained again (other weights): its student is changed, the teacher is not
    write_study(study, methods)
    (out / "t" / "seed_1" / "checkpoints" / "last.ckpt").write_bytes(b"t weights, trained again")
    main([*command, "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert states("\n".join(lines)) == ["done", "changed", "done"]
    assert "teacher t seed 1 was trained again since" in lines[4]

    # the teacher's run is gone: it trains again first, so its student is changed
    (out / "s" / "seed_1" / "checkpoints" / "last.ckpt").write_bytes(b"s weights")  # the student as it learnt
    (out / "t" / "seed_1" / "results.json").unlink()
    (out / "t" / "seed_1" / "checkpoints" / "last.ckpt").unlink()
    main([*command, "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert states("\n".join(lines)) == ["new", "changed", "done"]
    assert "teacher t seed 1 has no finished run" in "\n".join(lines)


@pytest.mark.slow
def test_rerun_changed_reruns_the_students_of_a_changed_teacher(tmp_path, capsys):
    import hashlib

    single = str(DIGITS / "single.yaml")
    methods = {"t": {"config": single}, "s": {"config": single, "teacher": "t"}}
    study, out = write_study(tmp_path / "s.yaml", methods), tmp_path / "out"
    command = ["study", "--config", str(study), "--out", str(out)]
    main(command)
    old_student = (out / "s" / "seed_1" / "results.json").read_bytes()
    capsys.readouterr()
    write_study(study, {**methods, "t": {"config": single, "args": ["--model.dropout=0.3"]}})
    main([*command, "--rerun_changed"])
    captured = capsys.readouterr().out
    assert "done before, skipped" not in captured
    assert "s seed 1: arguments changed (teacher t: model.init_args.dropout" in captured
    for name in ("t", "s"):  # each old run kept as a numbered copy, each run made afresh
        assert f"old run moved to {out / name / 'seed_1.prev-1'}" in captured
        assert (out / name / "seed_1" / "results.json").exists() and (out / name / "seed_1.prev-1" / "results.json").exists()
    assert (out / "s" / "seed_1.prev-1" / "results.json").read_bytes() == old_student
    teacher = hashlib.sha256((out / "t" / "seed_1" / "checkpoints" / "last.ckpt").read_bytes()).hexdigest()
    assert json.loads((out / "s" / "seed_1" / "study_run.json").read_text())["teacher_checkpoint"] == teacher
    main([*command, "--dry_run"])
    assert states(capsys.readouterr().out) == ["done", "done"]


def test_a_changed_student_of_a_teacher_that_fails_again_keeps_its_old_run_apart(tmp_path, capsys, monkeypatch):
    """--rerun_changed, and the changed teacher fails: the student's old run is moved aside before "teacher failed" is
    recorded, so no record of today's arguments sits beside the old results (it would later pass for done)."""
    from ensemble_lab.runs.interrupts import InterruptWatch
    from ensemble_lab.study.job import run_from_json, run_to_json, write_record
    from ensemble_lab.study.launchers import sequential as launchers

    single = str(DIGITS / "single.yaml")
    methods = {"t": {"config": single}, "s": {"config": single, "teacher": "t"}}
    study, out = write_study(tmp_path / "s.yaml", methods), tmp_path / "out"
    for run in load_study(study, out):
        (run.run_dir / "checkpoints").mkdir(parents=True)
        (run.run_dir / "checkpoints" / "last.ckpt").write_bytes(f"{run.name} weights".encode())
        (run.run_dir / "results.json").write_text(json.dumps({"made": "before"}))
        write_record(run, "done")
    write_study(study, {**methods, "t": {"config": single, "args": ["--model.dropout=0.3"]}})
    runs = load_study(study, out)
    copy = run_from_json(run_to_json(runs[1]))  # a local run's process gets the student with its teacher's chain
    assert copy.lineage() == runs[1].lineage() and copy.upstream == runs[0]
    monkeypatch.setattr(launchers, "run_job", lambda run: "boom")  # the teacher's fit fails
    with InterruptWatch() as watch:
        failed = launchers.run_sequential(runs, watch)
    assert failed == ["t seed 1 (boom)", "s seed 1 (teacher failed: t seed 1 did not finish)"]
    student = out / "s" / "seed_1"
    assert json.loads((student.with_name("seed_1.prev-1") / "results.json").read_text()) == {"made": "before"}
    assert not (student / "results.json").exists() and json.loads((student / "study_run.json").read_text())["state"] == "failed"


def test_a_record_of_the_last_release_with_old_option_names_is_not_changed(tmp_path, capsys):
    """Records written before options belonged to their objects hold the flat old keys; they translate to today's."""
    study = write_study(tmp_path / "s.yaml", {"single": {"config": str(DIGITS / "single.yaml")}})
    out, run = tmp_path / "out", tmp_path / "out" / "single" / "seed_1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    [current] = load_study(study, out)
    today = current.resolved()
    assert today["model.init_args.backbone.init_args.hidden_sizes"] == [64, 32, 16]
    renamed = ("model.init_args.backbone", "model.init_args.distillation", "model.init_args.repulsion")
    old_config = {k: v for k, v in today.items() if not k.startswith(renamed)}
    old_config.update({  # as main at 9fa6435 recorded them
        "model.init_args.backbone": "mlp", "model.init_args.hidden_sizes": [64, 32, 16], "model.init_args.width": None,
        "model.init_args.depth": None, "model.init_args.widen_factor": None, "model.init_args.teacher": None,
        "model.init_args.distill_temperature": 4.0, "model.init_args.distill_alpha": 0.5, "model.init_args.distill_match": "mean",
        "model.init_args.repulsion": 0.0, "model.init_args.repulsion_bandwidth": 0.5,
    })  # fmt: skip
    old_argv = [a.replace("--model.backbone.hidden_sizes", "--model.hidden_sizes") for a in current.fit_args(resume=False)]
    (run / "study_run.json").write_text(json.dumps({"argv": old_argv, "config": old_config}))
    command = ["study", "--config", str(study), "--out", str(out), "--dry_run"]
    main(command)
    assert states(capsys.readouterr().out) == ["resume"]

    # an old record of another network is still a change, named in today's keys
    (run / "study_run.json").write_text(json.dumps({"argv": old_argv, "config": {**old_config, "model.init_args.hidden_sizes": [8]}}))
    main(command)
    out_lines = capsys.readouterr().out
    assert states(out_lines) == ["changed"]
    assert "model.init_args.backbone.init_args.hidden_sizes: [8] -> [64, 32, 16]" in out_lines
