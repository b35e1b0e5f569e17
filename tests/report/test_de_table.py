"""The report's Deep-Ensemble columns (report/de_table.py, report/de_curve.py) against numpy: Deep Ensembles assembled
from tiny saved predictions, each temperature found by a grid over T, the fraction of the DE's gain by hand, and
dashes (not an error) where predictions are missing."""

import json
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ensemble_lab.cli.app import main
from ensemble_lab.metrics.de_equivalent import deep_ensemble_equivalent
from ensemble_lab.report import de_curve, de_figure, figures
from ensemble_lab.report.columns import preset_columns
from ensemble_lab.report.de_curve import Saved, pool_of
from ensemble_lab.report.de_figure import de_equivalent_figure
from ensemble_lab.report.de_table import add_de_equivalents
from ensemble_lab.report.figure_rows import RunGroup, looks, run_results
from ensemble_lab.report.groups import build_report, run_groups
from ensemble_lab.runs.results import VAL_SPLIT

C, N_VAL, N_TEST = 3, 30, 40
#: the grid of temperatures the reference searches (log-spaced), then a finer one around its best point; NLL is flat
#: at its minimum, so the fine grid's step changes the test NLL by far less than the tolerance
GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 401))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def averaged_nll(logits: np.ndarray, targets: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """NLL of the members' (k, N, C) averaged probabilities after dividing the logits by each T: shape (len(T),)."""
    probs = softmax(logits[None] / temperatures[:, None, None, None]).mean(axis=1)  # (T, N, C)
    return -np.log(probs[:, np.arange(len(targets)), targets]).mean(axis=1)


def ts_nll(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """The test NLL at the grid temperature minimising the validation NLL."""
    coarse = GRID[np.argmin(averaged_nll(val[0], val[1], GRID))]
    fine = coarse * np.exp(np.linspace(-0.02, 0.02, 401))  # ± one coarse step (log 400 / 400 = 0.015)
    best = fine[np.argmin(averaged_nll(val[0], val[1], fine))]
    return float(averaged_nll(test[0], test[1], np.array([best]))[0])


def networks(rng: np.random.Generator, count: int, targets: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """``count`` noisy networks: logits of each set (N, C), leaning to the true class (overconfident: T > 1 helps)."""
    return [{s: 3.0 * (np.eye(C)[y] + rng.normal(0, 0.8, (len(y), C))) for s, y in targets.items()} for _ in range(count)]


def write_run(run: Path, method: str, members: list[dict[str, np.ndarray]] | None, targets: dict, seed: int, nll: float, m: int) -> None:
    """results.json (digits: nll, acc, ece as given) and, with ``members``, predictions/<set>.npz of the logits."""
    run.mkdir(parents=True)
    sets = {"digits": {"role": "id", "nll": nll, "acc": 0.9 - nll / 10, "ece": nll / 10}, "noise": {"role": "ood", "auroc_msp": 0.5}}
    doc = {"method": method, "num_members": m, "seed": seed, "datamodule": "DigitsDataModule", "sets": sets}
    (run / "results.json").write_text(json.dumps(doc))
    if members is None:
        return
    (run / "predictions").mkdir()
    for name in ("digits", VAL_SPLIT):
        logits = np.stack([member[name] for member in members]).astype(np.float32)  # (M, N, C)
        np.savez(run / "predictions" / f"{name}.npz", member_probs=softmax(logits), member_logits=logits, targets=targets[name])


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, dict]:
    """3 single runs and 2 DeepEnsemble runs (M = 2) with predictions, 2 BatchEnsemble runs without; their nets and nlls."""
    rng = np.random.default_rng(0)
    targets = {"digits": rng.integers(0, C, N_TEST), VAL_SPLIT: rng.integers(0, C, N_VAL)}
    nets = {"single": networks(rng, 3, targets), "de": networks(rng, 4, targets)}
    nll = {"single": [0.40, 0.44, 0.42], "de": [0.30, 0.32], "be": [0.35, 0.39]}
    for k in range(3):
        write_run(tmp_path / "single" / f"seed_{k}", "SingleModel", nets["single"][k : k + 1], targets, k, nll["single"][k], 1)
    for k in range(2):
        write_run(tmp_path / "de" / f"seed_{k}", "DeepEnsemble", nets["de"][2 * k : 2 * k + 2], targets, k, nll["de"][k], 2)
        write_run(tmp_path / "be" / f"seed_{k}", "BatchEnsemble", None, targets, k, nll["be"][k], 2)
    return tmp_path, {"targets": targets, "nets": nets, "nll": nll}


def stacked(nets: list[dict[str, np.ndarray]], targets: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([n[name] for n in nets]).astype(np.float32).astype(np.float64), targets[name]


def test_columns_equal_numpy_assembled_ensembles_and_hand_gains(study) -> None:
    root, truth = study
    targets, singles = truth["targets"], truth["nets"]["single"]
    # numpy: every subset of the 3 single networks per size, each at its grid temperature
    curve = []
    for size in (1, 2, 3):
        values = [ts_nll(stacked([singles[i] for i in s], targets, VAL_SPLIT), stacked([singles[i] for i in s], targets, "digits"))
                  for s in combinations(range(3), size)]  # fmt: skip
        curve.append(float(np.mean(values)))
    assert curve[0] > curve[1] > curve[2]  # the fixture's networks: more of them help
    de_runs = [truth["nets"]["de"][2 * k : 2 * k + 2] for k in range(2)]
    de_ts = float(np.mean([ts_nll(stacked(r, targets, VAL_SPLIT), stacked(r, targets, "digits")) for r in de_runs]))
    assert curve[2] < de_ts < curve[0]
    expected_dee = float(np.interp(de_ts, curve[::-1], [3, 2, 1]))  # the piecewise-linear curve inverted

    groups, saved = build_report([root], columns=preset_columns("dee")), Saved()
    add_de_equivalents(groups, explicit=True, saved=saved)
    rows = {g.method: g.stats["digits"] for g in groups}
    assert rows["DeepEnsemble"]["ts_nll"].mean == pytest.approx(de_ts, rel=1e-4)
    assert rows["DeepEnsemble"]["dee"].mean == pytest.approx(expected_dee, rel=1e-3)
    single_ts = np.mean([ts_nll(stacked([n], targets, VAL_SPLIT), stacked([n], targets, "digits")) for n in singles])
    assert rows["SingleModel"]["ts_nll"].mean == pytest.approx(single_ts, rel=1e-4)
    assert rows["SingleModel"]["dee"].mean == pytest.approx(1.0)  # the mean of size 1 is the single runs' own mean
    # fraction of the gain by hand: single 0.42, DE 0.31 (means over seeds); BatchEnsemble's runs 0.35 and 0.39
    nll = truth["nll"]
    single, de = np.mean(nll["single"]), np.mean(nll["de"])
    assert single == pytest.approx(0.42) and de == pytest.approx(0.31)
    assert rows["BatchEnsemble"]["de_gain_nll"].mean == pytest.approx(((0.42 - 0.35) / 0.11 + (0.42 - 0.39) / 0.11) / 2)
    assert rows["BatchEnsemble"]["de_gain_acc"].mean == pytest.approx(((0.042 - 0.035) / 0.011 + (0.042 - 0.039) / 0.011) / 2)
    assert rows["DeepEnsemble"]["de_gain_ece"].mean == pytest.approx(1.0)
    # BatchEnsemble saved no predictions: no TS-NLL, no DEE, and the row says why
    assert rows["BatchEnsemble"]["dee"].n == 0 and "save_predictions" in next(g for g in groups if g.method == "BatchEnsemble").blank["digits"]["dee"]
    assert "noise" not in {n for g in groups for n, s in g.stats.items() if "dee" in s}  # no DEE of an ood set
    # the figure: each row with predictions at (its DEE, its TS-NLL) on the curve
    figure_rows = run_groups(groups)
    fig, why = de_equivalent_figure(figure_rows, looks(figure_rows), [[run_results(r) for r in g.runs] for g in figure_rows], saved)
    assert fig is not None and why == ""
    (ax,) = fig.axes
    placed = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines if not line.get_label().startswith("_")}
    assert placed["DeepEnsemble, M=2"] == pytest.approx((expected_dee, de_ts), rel=1e-3)
    assert np.allclose(ax.lines[0].get_ydata(), curve, rtol=1e-4)  # the Deep Ensembles' curve
    assert "BatchEnsemble, M=2" not in placed  # no predictions, no place


def test_markdown_and_latex_show_dashes_and_say_why(study, tmp_path) -> None:
    root, _ = study
    main(["report", str(root), "--preset", "dee", "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    be = next(line for line in text.splitlines() if line.startswith("| BatchEnsemble |")).split(" | ")
    header = next(line for line in text.splitlines() if line.startswith("| run |")).split(" | ")
    assert be[header.index("dee")] == "–" and be[header.index("ts_nll")] == "–" and be[header.index("de_gain_nll")] != "–"
    assert "– in ts_nll, dee of BatchEnsemble: no saved predictions of digits" in text
    assert "sizes 1..3 averaging subsets of 3 SingleModel runs" in text
    latex = (tmp_path / "out" / "report.tex").read_text()
    assert r"BatchEnsemble & 2 & 2 & " in latex and " & -- & -- & " in latex


def test_no_saved_predictions_anywhere_gives_dashes_not_an_error(study, capsys) -> None:
    root, _ = study
    for path in root.rglob("*.npz"):
        path.unlink()
    main(["report", str(root)])  # default layout: the gains from results.json, dashes where predictions are needed
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| SingleModel |")).split(" | ")
    header = next(line for line in text.splitlines() if line.startswith("| run |")).split(" | ")
    assert row[header.index("dee")] == "–" and abs(float(row[header.index("de_gain_nll")].split(" ± ")[0])) < 1e-3
    assert "no Deep-Ensemble curve of digits: a pool run saved no predictions/val_split.npz" in text


def test_too_few_single_runs_pool_the_deep_ensembles_members() -> None:
    row = lambda method, m, runs: SimpleNamespace(method=method, num_members=m, runs=[Path(r) for r in runs])  # noqa: E731
    rows = [row("SingleModel", 1, ["s0"]), row("DeepEnsemble", 2, ["d0", "d1"]), row("BatchEnsemble", 4, ["b0"])]
    pool, with_members = pool_of(rows)
    assert with_members and pool == [(Path("s0"), 0), (Path("d0"), 0), (Path("d0"), 1), (Path("d1"), 0), (Path("d1"), 1)]
    assert pool_of([row("SingleModel", 1, ["s0", "s1"]), row("DeepEnsemble", 2, ["d0"])]) == ([(Path("s0"), 0), (Path("s1"), 0)], False)


def test_figure_reuses_the_tables_fits_one_temperature_fit_per_subset(study, tmp_path, monkeypatch) -> None:
    """`report --preset dee --figures`: every subset's and every run's temperature is fitted once, and the figure places
    each row at the table's own dee and ts_nll (report.json), on the table's curve."""
    root, truth = study
    fits: list[bytes] = []
    real_fit = de_curve.fit_temperature

    def counted(member_log_probs, targets):
        fits.append(member_log_probs.numpy().tobytes())  # what was fitted: one subset's (or run's) validation logits
        return real_fit(member_log_probs, targets)

    drawn: list[tuple[dict, dict]] = []
    in_figure: list[int] = []  # the fits made while the figure was computed
    real_draw, real_figure = de_figure.draw_de_figure, figures.de_equivalent_figure

    def figure(*args, **kwargs):
        before = len(fits)
        result = real_figure(*args, **kwargs)
        in_figure.append(len(fits) - before)
        return result

    monkeypatch.setattr(de_curve, "fit_temperature", counted)
    monkeypatch.setattr(de_figure, "draw_de_figure", lambda curves, points: drawn.append((curves, points)) or real_draw(curves, points))
    monkeypatch.setattr(figures, "de_equivalent_figure", figure)
    main(["report", str(root), "--preset", "dee", "--figures", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "figures" / "deep_ensemble_equivalent.png").is_file() and len(drawn) == 1
    # 3 single networks in the pool: 3 + 3 + 1 subsets, each fitted once; and each run with a validation split once
    # (3 single + 2 DeepEnsemble; a size-1 subset has a single run's logits, so the inputs repeat 3 times)
    assert len(fits) == 7 + 5 and len(set(fits)) == 7 + 2 and in_figure == [0]
    rows = {g["method"]: g["stats"]["digits"] for g in json.loads((tmp_path / "out" / "report.json").read_text())}
    curves, points = drawn[0]
    placed = {look.name.split(",")[0]: value for look, value in points["digits"]}
    assert set(placed) == {"SingleModel", "DeepEnsemble"}  # BatchEnsemble saved no predictions
    for method, value in placed.items():
        assert value == rows[method]["ts_nll"]["mean"]  # the same number, not a refit that agrees to a tolerance
        assert deep_ensemble_equivalent(curves["digits"].ts_nll, value) == rows[method]["dee"]["mean"]
    singles = truth["nets"]["single"]
    numpy_curve = [np.mean([ts_nll(stacked([singles[i] for i in s], truth["targets"], VAL_SPLIT), stacked([singles[i] for i in s], truth["targets"], "digits"))
                            for s in combinations(range(3), k)]) for k in (1, 2, 3)]  # fmt: skip
    assert np.allclose(curves["digits"].ts_nll, numpy_curve, rtol=1e-4)


def test_the_figure_skip_names_the_save_hint_once(tmp_path, capsys):
    """Runs without saved predictions: the Deep-Ensemble figure is skipped with one reason and one hint."""
    groups = []
    for name, method, m in (("single", "SingleModel", 1), ("de", "DeepEnsemble", 2)):
        run = tmp_path / name
        run.mkdir()
        sets = {"digits": {"role": "id", "acc": 0.9, "nll": 0.3}}
        (run / "results.json").write_text(json.dumps({"method": method, "num_members": m, "seed": 1, "sets": sets}))
        groups.append(RunGroup(name, name, method, m, (run,)))
    assert "deep_ensemble_equivalent" not in figures.draw_figures(groups)
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "no deep_ensemble_equivalent figure" in line]
    assert line.count("test with --save_predictions true") == 1, line
