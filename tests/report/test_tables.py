"""`ensemble-lab report --format latex|csv`, --metrics, presets, significance marks, connectivity and --figures, on hand-written runs."""

import csv
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from ensemble_lab.cli import main
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.ood import ood_metrics
from ensemble_lab.report.de_curve import Saved
from ensemble_lab.report.main import report_main

#: per row: (method, run_name, M, per-seed id acc, nll, ece, mi); shift and ood metrics derive from them
ROWS = {
    "single": ("SingleModel", None, 1, [0.90, 0.91, 0.92], [0.31, 0.30, 0.35], [0.050, 0.040, 0.045], [0.0, 0.0, 0.0]),
    "de": ("DeepEnsemble", None, 4, [0.95, 0.96, 0.955], [0.20, 0.19, 0.21], [0.020, 0.030, 0.025], [0.08, 0.09, 0.07]),
    "be": ("BatchEnsemble", "be_rank2", 4, [0.905, 0.915, 0.91], [0.29, 0.28, 0.31], [0.060, 0.050, 0.055], [0.01, 0.02, 0.01]),
}
SEEDS = (1, 2, 3)


def write_run(run: Path, method: str, run_name: str | None, members: int, seed: int, sets: dict, **extra) -> Path:
    run.mkdir(parents=True)
    doc = {
        "method": method,
        "num_members": members,
        "seed": seed,
        "datamodule": "DigitsDataModule",
        "weight_cosine_mean": 0.5,
        "sets": sets,
        **extra,
    }
    if run_name:
        doc["run_name"] = run_name
    (run / "results.json").write_text(json.dumps(doc))
    return run


def sets_of(acc: float, nll: float, ece: float, mi: float) -> dict:
    ood = {f"{m}_{s}": v for s in ("msp", "entropy", "mi") for m, v in (("auroc", 1 - ece * 5), ("aupr", 1 - ece * 4), ("fpr95", ece * 6))}
    return {
        "digits": {
            "role": "id",
            "acc": acc,
            "nll": nll,
            "ece": ece,
            "brier": nll / 2,
            "mi": mi,
            "disagreement": mi / 2,
            "member_acc": [acc],
        },
        "digits_rotated": {
            "role": "shift",
            "acc": acc - 0.3,
            "nll": nll * 3,
            "ece": ece * 4,
            "brier": nll,
            "mi": mi * 2,
            "disagreement": mi,
        },
        "photo_patches": {"role": "ood", "acc": 0.0, "nll": 9.0, "mi": mi * 3, "disagreement": mi * 2, **ood},
    }


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    for name, (method, run_name, members, accs, nlls, eces, mis) in ROWS.items():
        for k, seed in enumerate(SEEDS):
            write_run(root / name / f"seed_{seed}", method, run_name, members, seed, sets_of(accs[k], nlls[k], eces[k], mis[k]))
    return root


def report(capsys, *args) -> str:
    main(["report", *map(str, args)])
    return capsys.readouterr().out


def latex_tables(text: str) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """caption -> (header cells, row name -> cells) of every tabular in ``text``."""
    tables = {}
    for block in text.split(r"\begin{table}")[1:]:
        caption = block.split(r"\caption{")[1].split("}\n")[0]
        body = block.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
        header = block.split(r"\toprule")[1].split(r"\midrule")[0].strip().removesuffix(r"\\").split(" & ")
        tables[caption] = (
            [h.strip() for h in header],
            {cells[0]: cells for cells in (line.removesuffix(r"\\").strip().split(" & ") for line in body)},
        )
    return tables


def test_latex_booktabs_bold_best_and_escaping(study, capsys):
    text = report(capsys, study, "--format", "latex")
    tables = latex_tables(text)
    assert text.count(r"\toprule") == text.count(r"\midrule") == text.count(r"\bottomrule") == len(tables) == 4  # no cost: none measured
    assert "<" not in text.replace(r"$<$", "")  # text-mode < prints as ¡ in LaTeX's default font encoding
    assert set(tables) == {r"digits (id)", r"digits\_rotated (shift)", r"photo\_patches (ood)", "weight space"}
    assert tables["weight space"][0][3:] == [r"weight\_cosine\_mean"]  # no run has the other cosine: no blank column
    header, rows = tables["digits (id)"]
    assert set(rows) == {"SingleModel", r"be\_rank2 (BatchEnsemble)", "DeepEnsemble"}  # the run_name's underscore escaped
    assert header[:3] == ["run", "$M$", "$n$"] and r"acc $\uparrow$" in header and r"nll $\downarrow$" in header and "mi" in header
    names = {"SingleModel": "single", "DeepEnsemble": "de", r"be\_rank2 (BatchEnsemble)": "be"}
    for column, index, better in (("acc", 3, max), ("nll", 4, min), ("ece", 5, min)):
        means = {row: round(statistics.fmean(ROWS[key][index]), 3) for row, key in names.items()}
        best = better(means.values())
        for row, cells in rows.items():
            cell = cells[header.index(next(h for h in header if h.startswith(column + " ")))]
            assert (r"\mathbf" in cell) == (means[row] == best), (column, row, cell)
    mi_cells = [cells[header.index("mi")] for cells in rows.values()]
    assert not any(r"\mathbf" in c for c in mi_cells)  # diversity is not ranked
    acc = ROWS["single"][3]
    assert rows["SingleModel"][3] == f"${statistics.fmean(acc):.3f} \\pm {statistics.stdev(acc):.3f}$"  # the baseline: no mark
    assert (
        rows["DeepEnsemble"][3]
        == f"$\\mathbf{{{statistics.fmean(ROWS['de'][3]):.3f} \\pm {statistics.stdev(ROWS['de'][3]):.3f}}}^{{\\dagger}}$"
    )
    assert r"$^\dagger$ differs from SingleModel: Welch's t-test over seeds (two-sided, unequal variances), p $<$ 0.05" in text
    ood_header, _ = tables[r"photo\_patches (ood)"]
    assert r"auroc\_msp $\uparrow$" in ood_header and r"fpr95\_mi $\downarrow$" in ood_header and "acc" not in " ".join(ood_header)


def test_csv_parses_back_to_the_numbers_and_welch_p_values(study, capsys, tmp_path):
    out = tmp_path / "out"
    text = report(capsys, study, "--format", "csv", "--out", out, "--correction", "none")  # raw p-values mark (Holm: below)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert (out / "report.csv").read_text() + "\n" == text
    for name, (method, run_name, members, accs, nlls, eces, mis) in ROWS.items():
        label = run_name or method
        for metric, values in (("acc", accs), ("nll", nlls), ("ece", eces)):
            (row,) = [r for r in rows if r["label"] == label and r["set"] == "digits" and r["metric"] == metric]
            assert float(row["mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert float(row["std"]) == pytest.approx(statistics.stdev(values), rel=1e-12) and row["n"] == "3"
            if name == "single":
                assert row["test"] == "" and row["p"] == ""
                continue
            p = stats.ttest_ind(values, ROWS["single"][{"acc": 3, "nll": 4, "ece": 5}[metric]], equal_var=False).pvalue
            assert row["test"] == "welch" and float(row["p"]) == pytest.approx(p, rel=1e-9) and row["baseline"] == "SingleModel"
            assert row["significant"] == str(p < 0.05)
    document = json.loads((out / "report.json").read_text())
    de = next(g for g in document if g["method"] == "DeepEnsemble")
    expected = stats.ttest_ind(ROWS["de"][3], ROWS["single"][3], equal_var=False).pvalue
    assert de["baseline"] == "SingleModel" and de["significance"]["digits"]["acc"]["p"] == pytest.approx(expected, rel=1e-9)
    assert de["significance"]["digits"]["acc"]["significant"] is bool(expected < 0.05)
    assert {p.name for p in out.iterdir()} == {"report.md", "report.tex", "report.csv", "report.json"}


def test_markdown_marks_significant_cells(study, capsys):
    text = report(capsys, study, "--sets", "digits")
    de_row = next(line for line in text.splitlines() if line.startswith("| DeepEnsemble |"))
    p = stats.ttest_ind(ROWS["de"][3], ROWS["single"][3], equal_var=False).pvalue
    assert p < 0.05 and de_row.split("|")[5].strip().endswith("†")  # the acc cell
    assert "† differs from SingleModel: Welch's t-test over seeds" in text and "after Holm's correction" in text
    single_row = next(line for line in text.splitlines() if line.startswith("| SingleModel |"))
    assert "†" not in single_row  # the baseline itself


def test_metrics_choose_the_columns(study, capsys):
    text = report(capsys, study, "--metrics", "acc", "brier", "auroc_mi", "--format", "latex")
    tables = latex_tables(text)
    assert [h.split(" ")[0] for h in tables["digits (id)"][0][3:]] == ["acc", "brier"]  # auroc_mi: not an id-set column
    assert [h.split(" ")[0] for h in tables[r"photo\_patches (ood)"][0][3:]] == [r"auroc\_mi"]  # acc, brier: not on ood data
    assert "weight space" not in tables


def test_unknown_metric_is_one_line_listing_the_available(study, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(study), "--metrics", "acc", "accuracy"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--metrics accuracy: no such metric" in err and "available: acc, nll, ece, brier" in err and "Traceback" not in err


def test_paper_preset_columns(study, capsys):
    tables = latex_tables(report(capsys, study, "--preset", "paper", "--format", "latex"))
    column = lambda caption: [h.split(" ")[0] for h in tables[caption][0][3:]]  # noqa: E731
    assert column("digits (id)") == column(r"digits\_rotated (shift)") == ["acc", "nll", "ece"]
    assert column(r"photo\_patches (ood)") == [r"aupr\_msp", r"auroc\_msp", r"fpr95\_msp", "mi"]
    assert set(tables) == {"digits (id)", r"digits\_rotated (shift)", r"photo\_patches (ood)"}
    tables = latex_tables(report(capsys, study, "--preset", "paper", "--ood_score", "entropy", "--format", "latex"))
    assert column(r"photo\_patches (ood)") == [r"aupr\_entropy", r"auroc\_entropy", r"fpr95\_entropy", "mi"]


def add_connectivity(run: Path, loss: float | None, error: float | None) -> None:
    (run / "connectivity.json").write_text(json.dumps({"applicable": True, "barrier_loss_mean": loss, "barrier_error_mean": error,
                                                       "set": "digits", "points": 11, "pairs": []}))  # fmt: skip


def test_connectivity_and_the_single_basin_preset(study, capsys, tmp_path):
    barriers = {1: (0.30, 0.10), 2: (0.50, 0.20), 3: (None, None)}  # seed 3: not applicable
    for seed, (loss, error) in barriers.items():
        add_connectivity(study / "de" / f"seed_{seed}", loss, error)
    calibrated = study / "be" / "seed_1" / "results.json"
    doc = json.loads(calibrated.read_text())
    doc["sets_calibrated"] = {"digits": {**doc["sets"]["digits"], "ece": 0.011}}
    calibrated.write_text(json.dumps(doc))
    text = report(capsys, study, "--sets", "digits", "digits +T")
    weights = text[text.index("### weight space") :].split("###")[1]
    de_row = next(line for line in weights.splitlines() if line.startswith("| DeepEnsemble |"))
    assert "| 0.400 ± 0.141 (n=2) | 0.150 ± 0.071 (n=2) |" in de_row  # mean ± std over the seeds that have one
    tables = latex_tables(report(capsys, study, "--preset", "single_basin", "--format", "latex"))
    (caption,) = tables
    header, rows = tables[caption]
    assert caption == "digits: single basin"
    assert [h.split(" $")[0] for h in header[3:]] == ["acc", "nll", "ece", "ece +T", "mi", "disagreement", r"barrier\_loss\_mean"]
    assert rows[r"be\_rank2 (BatchEnsemble)"][6].startswith("$0.011$ (n=1)") and rows["SingleModel"][6] == ""
    assert rows["DeepEnsemble"][9].startswith(r"$0.400 \pm 0.141$ (n=2)")


def write_predicted_run(root: Path, name: str, method: str, probs: torch.Tensor, targets: torch.Tensor) -> Path:
    """A single-run row whose results.json numbers and predictions/digits.npz agree."""
    metrics = {k: v for k, v in predictive_metrics(probs, targets).items() if not isinstance(v, list)}
    run = write_run(root / name, method, name, probs.shape[0], 1, {"digits": {"role": "id", **metrics}})
    (run / "predictions").mkdir()
    np.savez(run / "predictions" / "digits.npz", member_probs=probs.numpy(), targets=targets.numpy())
    return run


def test_single_runs_get_a_paired_bootstrap(tmp_path, capsys):
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 10, (150,), generator=generator)
    noise = torch.randn(4, 150, 10, generator=generator)
    right = torch.rand(150, generator=generator)
    guess = lambda p: torch.where(right < p, targets, (targets + 3) % 10)  # noqa: E731  right on a fraction p of the samples
    single = (noise[:1] + 4 * torch.nn.functional.one_hot(guess(0.6), 10)).softmax(-1)  # (1, N, C)
    better = (noise + 4 * torch.nn.functional.one_hot(guess(0.95), 10)).softmax(-1)  # (4, N, C)
    write_predicted_run(tmp_path, "single", "SingleModel", single, targets)
    write_predicted_run(tmp_path, "better", "DeepEnsemble", better, targets)
    write_predicted_run(tmp_path, "same", "MCDropout", single.clone(), targets)  # the baseline's predictions
    out = tmp_path / "out"
    text = report(capsys, tmp_path, "--out", out, "--resamples", "200", "--metrics", "acc", "nll", "ece")
    document = {g["label"]: g for g in json.loads((out / "report.json").read_text())}
    for metric in ("acc", "nll", "ece"):
        result = document["better"]["significance"]["digits"][metric]
        assert result["test"] == "bootstrap" and result["level"] == 0.95 and result["resamples"] == 200
        assert result["ci"][0] <= result["difference"] <= result["ci"][1]
        assert result["significant"] is (metric != "ece")  # far more accurate, so lower nll; its ece is not far off
        assert result["difference"] == pytest.approx(
            predictive_metrics(better, targets)[metric] - predictive_metrics(single, targets)[metric]
        )
        same = document["same"]["significance"]["digits"][metric]
        assert same["ci"] == [0.0, 0.0] and same["significant"] is False
    assert document["better"]["significance"]["digits"]["acc"]["ci"][0] > 0  # accuracy clearly up
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert "‡" in rows["better (DeepEnsemble)"] and "‡" not in rows["same (MCDropout)"]
    assert "†" not in text  # no Welch's t-test: every row has a single run
    assert "‡ differs from single (SingleModel): a paired bootstrap over test samples (200 resamples;" in text


def test_a_baseline_bootstraps_each_rows_own_metrics(tmp_path, capsys):
    """--baseline DeepEnsemble over single-run rows: the single model (first, no mi-based scores) and then
    BatchEnsemble, which has them; the baseline's resamples must cover both rows' metrics."""
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 10, (120,), generator=generator)
    probs = {}
    for name, method, m in (("single", "SingleModel", 1), ("de", "DeepEnsemble", 4), ("be", "BatchEnsemble", 4)):
        id_probs = (3 * torch.randn(m, 120, 10, generator=generator)).softmax(-1)
        ood_probs = torch.randn(m, 90, 10, generator=generator).softmax(-1)
        sets = {
            "digits": {"role": "id", **{k: v for k, v in predictive_metrics(id_probs, targets).items() if not isinstance(v, list)}},
            "photos": {"role": "ood", **ood_metrics(id_probs, ood_probs)},
        }
        run = write_run(tmp_path / name, method, name, m, 1, sets)
        (run / "predictions").mkdir()
        np.savez(run / "predictions" / "digits.npz", member_probs=id_probs.numpy(), targets=targets.numpy())
        np.savez(run / "predictions" / "photos.npz", member_probs=ood_probs.numpy(), targets=torch.zeros(90, dtype=torch.long).numpy())
        probs[name] = id_probs, ood_probs
    out = tmp_path / "out"
    report(capsys, tmp_path, "--out", out, "--resamples", "50", "--baseline", "DeepEnsemble", "--sets", "photos")
    document = {g["label"]: g for g in json.loads((out / "report.json").read_text())}
    result = document["be"]["significance"]["photos"]["auroc_mi"]
    expected = ood_metrics(*probs["be"])["auroc_mi"] - ood_metrics(*probs["de"])["auroc_mi"]
    assert result["test"] == "bootstrap" and result["difference"] == pytest.approx(expected)
    assert document["single"]["significance"]["photos"]["auroc_msp"]["test"] == "bootstrap"


def test_the_baseline_default_and_errors(study, capsys, tmp_path):
    report(capsys, study, "--baseline", "be_rank2", "--out", tmp_path / "a")
    document = {g["label"]: g for g in json.loads((tmp_path / "a" / "report.json").read_text())}
    assert document["SingleModel"]["baseline"] == "be_rank2 (BatchEnsemble)" and document["be_rank2"]["baseline"] is None
    no_single = tmp_path / "no_single"
    for name in ("de", "be"):
        for seed in SEEDS:
            (no_single / name / f"seed_{seed}").mkdir(parents=True)
            (no_single / name / f"seed_{seed}" / "results.json").write_text((study / name / f"seed_{seed}" / "results.json").read_text())
    main(["report", str(no_single)])
    captured = capsys.readouterr()
    assert captured.err.count("no significance marks (no SingleModel row; give --baseline LABEL)") == 1 and "†" not in captured.out
    write_run(study / "be_plain" / "seed_1", "BatchEnsemble", "be_plain", 4, 1, sets_of(0.9, 0.3, 0.05, 0.01))
    for bad, message in (
        (
            "nope",
            "--baseline nope: no row has that label or method; give one of: SingleModel, DeepEnsemble, be_plain (BatchEnsemble), be_rank2",
        ),
        (
            "BatchEnsemble",
            "--baseline BatchEnsemble names several rows of DigitsDataModule (be_plain (BatchEnsemble), be_rank2 (BatchEnsemble))",
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["report", str(study), "--baseline", bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    main(["report", str(study), "--baseline", "be_plain (BatchEnsemble)", "--out", str(tmp_path / "b")])  # the full row name picks one
    document = {g["label"]: g for g in json.loads((tmp_path / "b" / "report.json").read_text())}
    no_test = document["be_rank2"]["significance"]["digits"]["acc"]  # be_plain has a single run and no saved predictions
    assert (
        document["be_rank2"]["baseline"] == "be_plain (BatchEnsemble)"
        and "test" not in no_test
        and "--save_predictions true" in no_test["reason"]
    )
    assert "comparisons without a test: a single-run row without predictions/<set>.npz" in capsys.readouterr().err


def test_figures_wiring(study, capsys, tmp_path, monkeypatch):
    from ensemble_lab.report import figures as report_figures

    calls = []
    monkeypatch.setattr(
        report_figures,
        "draw_report_figures",
        lambda groups, out, formats=("png",), dpi=200, saved=None: calls.append((groups, out, formats, dpi, saved)) or [],
    )
    out = tmp_path / "out"
    report(capsys, study, "--out", out, "--figures", "--figure_format", "png", "pdf", "--dpi", "150")
    ((groups, where, formats, dpi, saved),) = calls
    assert where == out and tuple(formats) == ("png", "pdf") and dpi == 150
    assert isinstance(saved, Saved)  # the Deep-Ensemble columns' cache: the figure reuses their fits
    assert [(g.name, g.label, g.method, g.num_members) for g in groups] == [
        ("SingleModel, M=1", "SingleModel", "SingleModel", 1),
        ("DeepEnsemble, M=4", "DeepEnsemble", "DeepEnsemble", 4),
        ("be_rank2 (BatchEnsemble), M=4", "be_rank2", "BatchEnsemble", 4),
    ]  # table row order
    assert groups[2].runs == tuple((study / "be" / f"seed_{s}").resolve() for s in SEEDS)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(study), "--figures"])
    assert exit_info.value.code == 2 and "--figures needs --out DIR" in capsys.readouterr().err


def test_report_main_as_a_study_calls_it(study, tmp_path, capsys):
    files = sorted(str(p) for p in study.rglob("results.json"))
    report_main([*files, "--out", str(tmp_path / "out"), "--preset", "paper", "--format", "latex"])
    printed = capsys.readouterr().out
    assert (tmp_path / "out" / "report.tex").read_text() in printed and "wrote" not in printed  # notes go to stderr
    assert (
        r"aupr\_msp" in (tmp_path / "out" / "report.tex").read_text()
        and "| acc | nll | ece |" in (tmp_path / "out" / "report.md").read_text()
    )


def holm_by_hand(p_values: list[float], alpha: float) -> tuple[list[float], list[bool]]:
    """Holm's procedure as textbooks state it: sort, reject the k-th smallest while p_(k) < alpha / (m - k + 1), stop
    at the first that is not; adjusted p_(k) = max over j <= k of min(1, (m - j + 1) p_(j))."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, rejected, running, stopped = [0.0] * m, [False] * m, 0.0, False
    for k, i in enumerate(order, start=1):
        running = max(running, min(1.0, (m - k + 1) * p_values[i]))
        adjusted[i] = running
        stopped = stopped or not p_values[i] < alpha / (m - k + 1)
        rejected[i] = not stopped
    return adjusted, rejected


def test_holm_correction_over_a_rows_tests_against_scipy_and_a_hand_holm(tmp_path, capsys):
    """Three tests in one row: acc clearly better (p ~ 0.004), nll (p ~ 0.038) significant only uncorrected, ece not at all."""
    base = {"acc": [0.90, 0.91, 0.92], "nll": [0.30, 0.32, 0.34], "ece": [0.05, 0.04, 0.06]}
    row = {"acc": [0.95, 0.96, 0.97], "nll": [0.25, 0.27, 0.29], "ece": [0.05, 0.045, 0.06]}
    for name, values in (("single", base), ("de", row)):
        method = {"single": "SingleModel", "de": "DeepEnsemble"}[name]
        for k, seed in enumerate(SEEDS):
            write_run(tmp_path / "runs" / name / f"seed_{seed}", method, None, 1 if name == "single" else 4, seed,
                      {"digits": {"role": "id", **{m: v[k] for m, v in values.items()}}})  # fmt: skip
    p = {m: stats.ttest_ind(row[m], base[m], equal_var=False).pvalue for m in base}
    adjusted, rejected = holm_by_hand([p[m] for m in base], 0.05)
    assert rejected == [True, False, False] and p["nll"] < 0.05 <= adjusted[1]  # the case Holm is for
    for correction in ("holm", "none"):
        text = report(capsys, tmp_path / "runs", "--format", "csv", "--correction", correction)
        cells = {r["metric"]: r for r in csv.DictReader(io.StringIO(text)) if r["label"] == "DeepEnsemble"}
        expected = dict(zip(base, adjusted if correction == "holm" else [p[m] for m in base]))
        for metric in base:
            assert float(cells[metric]["p"]) == pytest.approx(p[metric], rel=1e-9)  # Welch = scipy's, equal_var=False
            assert float(cells[metric]["p_adjusted"]) == pytest.approx(expected[metric], rel=1e-9)
            assert cells[metric]["correction"] == correction and cells[metric]["significant"] == str(expected[metric] < 0.05)
        markdown = report(capsys, tmp_path / "runs", "--correction", correction)
        de = next(line for line in markdown.splitlines() if line.startswith("| DeepEnsemble |")).split(" | ")
        assert [cell.endswith("†") for cell in de[4:7]] == ([True, False, False] if correction == "holm" else [True, True, False])
        assert ("after Holm's correction over each row's tests on this set" in markdown) == (correction == "holm")
        assert ("uncorrected for multiple comparisons" in markdown) == (correction == "none")


def sections(markdown: str) -> dict[str, str]:
    """title -> body of every "### title" section of a Markdown report."""
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in markdown.split("### ")[1:]}


def test_footnotes_only_under_tables_whose_cells_were_tested_and_say_which_test(study, capsys):
    """The † note stood under every table with a baseline: the cost table (never tested), a +T set the baseline
    lacks, and the weight-space table, whose note named a bootstrap it never uses."""
    for k, seed in enumerate(SEEDS):
        for name, cosine in (("single", 0.99), ("de", 0.1), ("be", 0.9)):
            path = study / name / f"seed_{seed}" / "results.json"
            doc = json.loads(path.read_text())
            doc.update(weight_cosine_mean=cosine + 0.01 * k, cost={"parameters": 100 * doc["num_members"], "images_per_s": 50.0 + k})
            if name == "be":  # only BatchEnsemble was temperature-scaled: the baseline has no "digits +T"
                doc["sets_calibrated"] = {"digits": {**doc["sets"]["digits"], "ece": 0.01 + k / 100}}
            path.write_text(json.dumps(doc))
    parts = sections(report(capsys, study, "--sets", "digits", "digits +T"))
    assert set(parts) >= {"digits (id)", "digits +T (id)", "weight space", "cost"}
    assert "differs from" not in parts["cost"] and "differs from" not in parts["digits +T (id)"]
    assert "† differs from SingleModel: Welch's t-test over seeds" in parts["weight space"]
    assert "bootstrap" not in parts["weight space"] and "‡" not in parts["weight space"]
    assert "tests of run-level metrics" in parts["weight space"]
    assert "† differs from SingleModel: Welch's t-test" in parts["digits (id)"] and "‡" not in parts["digits (id)"]
    latex = report(capsys, study, "--sets", "digits", "digits +T", "--format", "latex")
    for block in latex.split(r"\begin{table}")[1:]:
        caption = block.split(r"\caption{")[1].split("}\n")[0]
        assert (r"differs from" in block) == (caption in ("digits (id)", "weight space")), caption


def test_a_seed_level_and_a_test_sample_level_row_get_different_marks(tmp_path, capsys):
    """A row with one run was marked † from a paired bootstrap, the same symbol as Welch's t-test over seeds."""
    generator = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 10, (200,), generator=generator)
    noise = torch.randn(4, 200, 10, generator=generator)
    right = torch.rand(200, generator=generator)
    guess = lambda p: torch.where(right < p, targets, (targets + 3) % 10)  # noqa: E731
    single = (noise[:1] + 4 * torch.nn.functional.one_hot(guess(0.6), 10)).softmax(-1)  # (1, N, C)
    better = (noise + 4 * torch.nn.functional.one_hot(guess(0.95), 10)).softmax(-1)  # (4, N, C)
    write_predicted_run(tmp_path, "single", "SingleModel", single, targets)
    write_predicted_run(tmp_path, "boot", "DeepEnsemble", better, targets)
    out = tmp_path / "out"
    text = report(capsys, tmp_path, "--resamples", "200", "--metrics", "acc", "nll", "--out", out)
    boot = next(line for line in text.splitlines() if line.startswith("| boot (DeepEnsemble) |"))
    assert boot.count("‡") == 2 and "†" not in boot
    assert "‡ differs from single (SingleModel): a paired bootstrap over test samples (200 resamples;" in text
    assert "† differs" not in text
    document = {g["label"]: g for g in json.loads((out / "report.json").read_text())}
    acc = document["boot"]["significance"]["digits"]["acc"]
    assert acc["test"] == "bootstrap" and acc["correction"] == "holm" and acc["family"] == 2 and acc["p"] < 0.05
    # the same rows with three seeds each (the baseline's and the row's runs repeated, values nudged): Welch's t-test, †
    seeded = tmp_path / "seeded"
    for name, method, acc_values in (("single", "SingleModel", [0.60, 0.61, 0.59]), ("de", "DeepEnsemble", [0.95, 0.94, 0.96])):
        for k, seed in enumerate(SEEDS):
            write_run(seeded / name / f"seed_{seed}", method, None, 4, seed, {"digits": {"role": "id", "acc": acc_values[k]}})
    text = report(capsys, seeded)
    de = next(line for line in text.splitlines() if line.startswith("| DeepEnsemble |"))
    assert de.endswith("† |") and "‡" not in text
