"""The README's "Adding your own method": a method defined outside the package, run by class path.

tests/custom_method_example.py holds the README's example (``MyEnsemble``); these tests run it through
the real CLI as a user would: its options and help come from its signature and docstring, and fit,
test, report and study treat it like a built-in method.
"""

import json

import pytest
import torch
import yaml

from ensemble_lab.cli import main
from tests.conftest import REPO, TINY_TRAINER, read_results, run_dirs
from tests.custom_method_example import MyEnsemble

CLASS_PATH = "tests.custom_method_example.MyEnsemble"
QUICK = [*TINY_TRAINER, "--figures=false"]


def test_the_readme_shows_this_very_example():
    readme = (REPO / "README.md").read_text()
    block = readme.split("# mypackage.py (any importable module)\n", 1)[1].split("```", 1)[0]
    example = (REPO / "tests" / "custom_method_example.py").read_text()
    assert example.split('"""\n\n', 1)[1] == block  # the module without its docstring


def test_help_comes_from_the_signature_and_docstring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", CLASS_PATH])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--model.diversity" in out and "weight λ of the members' mutual information" in out
    assert "(type: float, default: 0.1)" in out
    assert "--model.num_members" in out  # EnsembleModule's options are inherited


def test_the_loss_rewards_disagreement():
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 8, 10), torch.randint(0, 10, (8,))  # (M, B, C)
    plain = MyEnsemble(diversity=0.0, input_shape=(1, 8, 8)).training_loss(logits, targets)
    diverse = MyEnsemble(diversity=0.5, input_shape=(1, 8, 8)).training_loss(logits, targets)
    assert diverse < plain  # the members disagree on random logits: the bonus lowers the loss
    same = logits[:1].expand(4, 8, 10)  # identical members: no mutual information, no bonus
    assert MyEnsemble(diversity=0.5).training_loss(same, targets) == pytest.approx(float(
        MyEnsemble(diversity=0.0).training_loss(same, targets)), abs=1e-6)


def test_fit_by_class_path_then_report(cli, tmp_path, capsys):
    cli("fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--model", CLASS_PATH,
        "--model.diversity", "0.2", "--trainer.default_root_dir", str(tmp_path), *QUICK)
    (run,) = run_dirs(tmp_path)
    results = read_results(run)
    assert results["method"] == "MyEnsemble" and results["num_members"] == 4  # M from the quickstart config
    assert {name: s["role"] for name, s in results["sets"].items()} == {
        "digits": "id", "digits_shifted": "shift", "photo_patches": "ood"}
    assert 0 <= results["sets"]["photo_patches"]["auroc_mi"] <= 1
    assert len(results["weight_cosine"]) == 4  # BatchLinear layers report their members' weights
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert model["class_path"] == CLASS_PATH and model["init_args"]["diversity"] == 0.2
    capsys.readouterr()

    main(["report", str(tmp_path)])
    assert "| MyEnsemble | 4 | DigitsDataModule | 1 |" in capsys.readouterr().out


def test_a_study_runs_it_like_a_built_in_method(tmp_path, capsys):
    study = tmp_path / "mine.yaml"
    study.write_text(yaml.safe_dump({
        "seeds": [1],
        "args": QUICK,
        "methods": {"mine": {"config": str(REPO / "configs" / "digits" / "single.yaml"),
                             "args": [f"--model={CLASS_PATH}", "--model.num_members=2"]}},
    }))
    main(["study", "--config", str(study), "--out", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "mine" / "seed_1" / "results.json").read_text())
    assert results["method"] == "MyEnsemble" and results["num_members"] == 2 and results["seed"] == 1
    assert "| mine (MyEnsemble) | 2 |" in capsys.readouterr().out
    assert "MyEnsemble" in (tmp_path / "out" / "report.md").read_text()
