"""`ensemble-lab connectivity --align` and `--plane` end to end: a tiny digits Deep Ensemble, one assembled from
SingleModel checkpoints, the runs alignment refuses and bad options."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ensemble_lab.cli import main
from ensemble_lab.connectivity.alignment import permute
from ensemble_lab.connectivity.command import run_connectivity
from ensemble_lab.connectivity.permutations import permutation_spec
from ensemble_lab.methods import BatchEnsemble, SingleModel
from tests.conftest import TINY_TRAINER
from tests.connectivity.test_command import _connectivity, _fake_run, _member_nll

MLP = {"hidden_sizes": [16]}


@pytest.fixture(scope="module")
def deep3(tmp_path_factory) -> Path:
    """A tiny digits DeepEnsemble of three members, fitted for one epoch."""
    root = tmp_path_factory.mktemp("align_plane")
    main(["fit", "--model=DeepEnsemble", "--model.num_members=3", "--model.backbone.hidden_sizes=[16]", "--data=DigitsDataModule",
          "--test_after_fit=false", f"--trainer.default_root_dir={root}", *TINY_TRAINER])  # fmt: skip
    return root / "lightning_logs" / "version_0"


@pytest.mark.slow
def test_align_and_plane_end_to_end(deep3, capsys):
    _connectivity(deep3, "--points", "3", "--align", "weight_matching", "--plane", "2,0,1", "--grid", "3")
    out = capsys.readouterr().out
    document = json.loads((deep3 / "connectivity.json").read_text())
    assert document["align"] == "weight_matching" and len(document["pairs"]) == 3
    ends = _member_nll(deep3, "val")
    for pair in document["pairs"]:
        # aligning permutes member j's units without changing its function: the aligned path ends where the raw one does
        assert pair["aligned_loss"][0] == pytest.approx(float(ends[pair["i"]]), rel=1e-5)
        assert pair["aligned_loss"][-1] == pytest.approx(float(ends[pair["j"]]), rel=1e-5)
        curve = np.asarray(pair["aligned_loss"])
        assert pair["aligned_barrier_loss"] == pytest.approx(max(0.0, curve[1] - (curve[0] + curve[2]) / 2))  # t = 0, ½, 1
    for key in ("aligned_barrier_loss", "aligned_barrier_error"):
        assert document[f"{key}_mean"] == pytest.approx(np.mean([p[key] for p in document["pairs"]]))
    plane = document["plane"]
    assert plane["members"] == [2, 0, 1] and plane["aligned"] is True and plane["grid"] == 3
    assert np.asarray(plane["loss"]).shape == (3, 3) == np.asarray(plane["error"]).shape
    for member, point in zip(plane["members"], plane["points"]):  # aligned or not, a member's point is that member
        assert point["loss"] == pytest.approx(float(ends[member]), rel=1e-5)
    assert (plane["points"][0]["x"], plane["points"][0]["y"]) == (0.0, 0.0)
    assert (deep3 / "figures" / "connectivity.png").exists() and (deep3 / "figures" / "connectivity_plane.png").exists()
    assert "aligned loss" in out and "plane through members 2, 0, 1" in out and "connectivity_plane.png" in out
    # a second walk keeps the first one's plane figure too
    _connectivity(deep3, "--points", "3")
    assert (deep3 / "figures" / "connectivity.prev-1_plane.png").exists() and not (deep3 / "figures" / "connectivity_plane.png").exists()
    assert json.loads((deep3 / "connectivity.json").read_text())["plane"] is None


def test_a_deep_ensemble_assembled_from_single_models_is_aligned(tmp_path):
    """Two SingleModel checkpoints, the second the first with its hidden units shuffled: aligned, the path is flat."""
    torch.manual_seed(0)
    first = SingleModel(**MLP)
    spec = permutation_spec(first.member_network())
    shuffled = {group: torch.randperm(n) for group, n in spec.sizes.items()}
    paths = []
    for k, state in enumerate((first.network.state_dict(), permute(first.network.state_dict(), spec, shuffled))):
        model = SingleModel(**MLP)
        model.network.load_state_dict(state)
        paths.append(str(tmp_path / f"single{k}.ckpt"))
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, paths[-1])
    run = tmp_path / "assembled"
    run.mkdir()
    config = {"model": {"class_path": "DeepEnsemble", "init_args": {**MLP, "member_checkpoints": paths}},
              "data": {"class_path": "DigitsDataModule"}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    document = run_connectivity(run / "config.yaml", points=5, align="weight_matching", quiet=True)
    pair = document["pairs"][0]
    assert document["checkpoint"] is None and pair["loss"][0] == pytest.approx(pair["loss"][-1], rel=1e-6)
    assert pair["loss"][2] != pytest.approx(pair["loss"][0], rel=1e-4)  # the raw midpoint is another network
    assert pair["aligned_barrier_loss"] == 0.0 and pair["aligned_barrier_error"] == 0.0
    assert len(set(pair["aligned_loss"])) == 1


def test_align_on_shared_weights_is_one_line_and_keeps_earlier_results(tmp_path, capsys):
    options = {"num_members": 2, **MLP}
    run = _fake_run(tmp_path, BatchEnsemble(**options), options)
    (run / "connectivity.json").write_text('{"earlier": true}')
    with pytest.raises(SystemExit) as info:
        _connectivity(run, "--align", "weight_matching")
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "BatchEnsemble's members share weights" in err and "it aligns DeepEnsemble" in err
    assert json.loads((run / "connectivity.json").read_text()) == {"earlier": True} and not list(tmp_path.rglob("*.prev-*"))


@pytest.mark.parametrize(
    "extra, says",
    [(["--plane", "0,1"], "give three member indices"), (["--plane", "0,1,2"], "numbered 0 to 1"),
     (["--plane", "0,0,1"], "must differ"), (["--grid", "5"], "give it with --plane"),
     (["--plane", "0,1,1", "--grid", "1"], "--grid must be an integer >= 2"), (["--align", "git"], "--align 'git' is not known")],
)  # fmt: skip
def test_bad_plane_grid_and_align_options_are_one_line(tmp_path, capsys, extra, says):
    options = {"num_members": 2, **MLP}
    run = _fake_run(tmp_path, BatchEnsemble(**options), options)
    with pytest.raises(SystemExit) as info:
        _connectivity(run, *extra)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and says in err and "Traceback" not in err
    assert not (run / "connectivity.json").exists()
