"""A study's spawned methods (``spawn: {from: PARENT, epoch: T}``) and its connectivity step's ``align``: the
arguments each run gets, the order they run in, and one-line errors for a wrong spec. Nothing is trained."""

import pytest
import yaml

from ensemble_lab.errors import ConfigError
from ensemble_lab.study.spec import load_study
from tests.conftest import REPO

DIGITS = REPO / "configs" / "digits"
DE, SINGLE = str(DIGITS / "deep_ensemble.yaml"), str(DIGITS / "single.yaml")


def _study(tmp_path, methods: dict, **top) -> list:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"seeds": [1, 2], "methods": methods, **top}))
    return load_study(path, out=tmp_path / "out")


def test_spawned_methods_start_from_their_parents_checkpoint_of_the_same_seed(tmp_path):
    runs = _study(
        tmp_path,
        {
            "de_t5": {"config": DE, "spawn": {"from": "single", "epoch": 5}},  # listed before its parent
            "de_t2": {"config": DE, "spawn": {"from": "single", "epoch": 2}},
            "single": {"config": SINGLE},
        },
    )
    assert [r.name for r in runs][:2] == ["single", "single"]  # the parent trains first
    parent = {r.seed: r for r in runs if r.name == "single"}
    assert all("--checkpoint.keep_epochs=[2,5]" in r.fit_args(False) for r in parent.values())  # once per seed, every t
    for run in (r for r in runs if r.name != "single"):
        t = int(run.name[-1])
        expected = tmp_path / "out" / "single" / f"seed_{run.seed}" / "checkpoints" / f"spawn-epoch={t}.ckpt"
        assert f"--model.spawn_from={expected}" in run.fit_args(False) and run.source_checkpoint == expected
        assert run.teacher == "single" and run.spawn_epoch == t and run.upstream is parent[run.seed]


def test_spawned_at_epoch_0_is_the_plain_deep_ensemble(tmp_path):
    spawned = _study(tmp_path, {"de": {"config": DE, "spawn": {"from": "single", "epoch": 0}}, "single": {"config": SINGLE}})
    plain = _study(tmp_path, {"de": {"config": DE}, "single": {"config": SINGLE}})
    assert [r.fit_args(False) for r in spawned] == [r.fit_args(False) for r in plain]  # no parent, no kept checkpoint
    assert not any(arg.startswith(("--model.spawn_from", "--checkpoint.keep_epochs")) for r in spawned for arg in r.fit_args(False))


def test_the_connectivity_step_can_align(tmp_path):
    runs = _study(
        tmp_path,
        {"de": {"config": DE}, "be": {"config": str(DIGITS / "batch_ensemble.yaml"), "connectivity": {"points": 5}}},
        connectivity={"points": 7, "align": "weight_matching"},
    )
    by_name = {r.name: r.connectivity_args() for r in runs}
    assert by_name["de"][-4:] == ["--points", "7", "--align", "weight_matching"]
    assert by_name["be"][-2:] == ["--points", "5"]  # a method's own step: raw only


@pytest.mark.parametrize(
    "methods,message",
    [
        ({"a": {"config": DE, "spawn": {"from": "p", "epoch": 2}}}, "a spawn parent 'p' is not a method of this study"),
        ({"a": {"config": DE, "spawn": {"epoch": 2}}}, "spawn must be a mapping {from: PARENT_METHOD, epoch: T >= 0}"),
        ({"a": {"config": DE, "spawn": {"from": "a", "epoch": -1}}}, "epoch: T >= 0"),
        ({"a": {"config": DE, "spawn": {"from": "b", "epoch": 2}, "teacher": "b"}, "b": {"config": SINGLE}}, "has a teacher and a spawn parent"),
        ({"a": {"config": DE, "spawn": {"from": "a", "epoch": 2}}}, "cycle"),
    ],
)
def test_bad_spawn_specs_are_one_line(tmp_path, methods, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        _study(tmp_path, methods)


def test_a_bad_align_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="align: none | weight_matching"):
        _study(tmp_path, {"de": {"config": DE}}, connectivity={"align": "git_rebasin"})
