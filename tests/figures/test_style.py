"""The paper's row order (METHOD_ORDER) against the methods the package exports."""

import inspect
import json
from pathlib import Path

import ensemble_lab.methods as methods
from ensemble_lab.figures.style import METHOD_ORDER, label_colours
from ensemble_lab.methods import EnsembleModule
from ensemble_lab.report.groups import build_report


def exported_methods() -> list[str]:
    """Every method class ensemble_lab.methods exports: the EnsembleModule subclasses in its ``__all__``."""
    found = [getattr(methods, name) for name in methods.__all__]
    return [c.__name__ for c in found if inspect.isclass(c) and issubclass(c, EnsembleModule) and c is not EnsembleModule]


def test_every_exported_method_has_a_place_in_the_paper_row_order():
    exported = exported_methods()
    assert "SnapshotEnsemble" in exported and len(exported) >= 9  # the derivation finds the methods at all
    assert sorted(set(exported) - set(METHOD_ORDER)) == []
    assert len(set(METHOD_ORDER)) == len(METHOD_ORDER)
    # the snapshot ensemble sits beside the Deep Ensemble it approximates
    assert METHOD_ORDER.index("SnapshotEnsemble") == METHOD_ORDER.index("DeepEnsemble") + 1


def test_report_rows_and_colours_follow_the_paper_order_for_every_method(tmp_path: Path):
    exported = exported_methods()
    for method in sorted(exported, reverse=True):  # written in an order unlike the paper's
        run = tmp_path / method / "seed_1"
        run.mkdir(parents=True)
        sets = {"digits": {"role": "id", "acc": 0.5, "nll": 0.2, "ece": 0.03, "mi": 0.01, "disagreement": 0.02}}
        doc = {"method": method, "num_members": 4, "seed": 1, "datamodule": "DigitsDataModule", "sets": sets}
        (run / "results.json").write_text(json.dumps(doc))
    expected = sorted(exported, key=METHOD_ORDER.index)
    assert [g.method for g in build_report([tmp_path])] == expected
    colours = label_colours((m, m) for m in reversed(exported))
    assert list(colours) == expected  # colours are handed out in the paper order
