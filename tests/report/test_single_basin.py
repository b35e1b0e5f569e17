"""The report's single-basin figures: each run's accuracy and NLL at its raw and aligned barrier, and its
quality against the spawn epoch t (recorded, 0 for a plain Deep Ensemble, none for other methods)."""

import json

import numpy as np

from ensemble_lab.report.figure_rows import RunGroup
from ensemble_lab.report.figures import draw_figures
from ensemble_lab.report.single_basin import spawn_epoch_of


def _run(root, name, method, acc, nll, barrier=None, aligned=None, **extra):
    run = root / name
    run.mkdir(parents=True)
    sets = {"digits": {"role": "id", "acc": acc, "nll": nll, "disagreement": 1 - acc}}
    (run / "results.json").write_text(json.dumps({"method": method, "num_members": 2, "seed": 1, "sets": sets, **extra}))
    if barrier is not None:
        (run / "connectivity.json").write_text(json.dumps({"barrier_loss_mean": barrier, "aligned_barrier_loss_mean": aligned}))
    return run


def test_spawn_epoch_of_a_run():
    assert spawn_epoch_of({"method": "DeepEnsemble", "spawn_epoch": 5}) == 5
    assert spawn_epoch_of({"method": "DeepEnsemble"}) == 0  # members apart from the start
    assert spawn_epoch_of({"method": "DeepEnsemble", "member_checkpoints": ["a", "b"]}) is None  # its members' runs say
    assert spawn_epoch_of({"method": "BatchEnsemble"}) is None


def test_the_figures_place_every_run_at_its_barriers_and_spawn_epoch(tmp_path):
    de = _run(tmp_path, "de", "DeepEnsemble", 0.9, 0.3, barrier=1.2, aligned=0.4)
    spawned = _run(tmp_path, "t5", "DeepEnsemble", 0.8, 0.5, barrier=0.1, aligned=0.05, spawn_epoch=5)
    be = _run(tmp_path, "be", "BatchEnsemble", 0.7, 0.6, barrier=0.02)
    groups = [RunGroup("de", "de", "DeepEnsemble", 2, (de,)), RunGroup("t5", "t5", "DeepEnsemble", 2, (spawned,)),
              RunGroup("be", "be", "BatchEnsemble", 2, (be,))]  # fmt: skip
    figures = draw_figures(groups)
    accuracy = figures["single_basin_digits"].axes[0]
    points = np.concatenate([c.get_offsets() for c in accuracy.collections])  # (markers, 2): (barrier, acc)
    expected = {(1.2, 0.9), (0.4, 0.9), (0.1, 0.8), (0.05, 0.8), (0.02, 0.7)}  # raw and aligned; BatchEnsemble raw only
    assert {(round(float(x), 6), round(float(y), 6)) for x, y in points} == expected
    against_t = figures["spawn_digits"].axes[0]
    markers = {(float(x), float(y)) for c in against_t.collections for x, y in c.get_offsets()}
    assert markers == {(0.0, 0.9), (5.0, 0.8)}  # the Deep Ensembles at t = 0 and 5
    assert [line.get_ydata()[0] for line in against_t.lines if line.get_linestyle() == "--"] == [0.7]  # BatchEnsemble's mean


def test_the_barrier_figure_lists_only_rows_with_a_barrier(tmp_path):
    de = _run(tmp_path, "de", "DeepEnsemble", 0.9, 0.3, barrier=1.2, aligned=0.4)
    single = _run(tmp_path, "single", "SingleModel", 0.85, 0.4)  # no connectivity.json: nothing to place on the x axis
    groups = [RunGroup("de", "de", "DeepEnsemble", 2, (de,)), RunGroup("single", "single", "SingleModel", 1, (single,))]
    figure = draw_figures(groups)["single_basin_digits"]
    labels = [text.get_text() for ax in figure.axes if (legend := ax.get_legend()) for text in legend.get_texts()]
    assert any(label.startswith("de") for label in labels)
    assert not any(label.startswith("single") for label in labels), labels
