"""`ensemble-lab report` against hand-written results.json files."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ensemble_lab.cli import main
from ensemble_lab.report.groups import Stat, build_report, format_stat, summarize
from ensemble_lab.report.main import to_markdown

OOD = {f"{m}_{s}": 0.5 for m in ("auroc", "aupr", "fpr95") for s in ("msp", "entropy", "mi")}


def write_run(root: Path, name: str, method: str, members: int, seed: int, acc: float, data: str = "DigitsDataModule",
              cosine: float | None = 0.9, **id_extra) -> Path:  # fmt: skip
    run = root / name
    run.mkdir(parents=True)
    document = {
        "method": method, "num_members": members, "seed": seed, "datamodule": data,
        "weight_cosine_mean": cosine,
        "sets": {
            "digits": {"role": "id", "acc": acc, "nll": 0.2, "ece": 0.03, "mi": 0.01, "disagreement": 0.02, **id_extra},
            "photo_patches": {"role": "ood", "acc": 0.0, "mi": 0.1, "disagreement": 0.3, **OOD},
        },
    }  # fmt: skip
    (run / "results.json").write_text(json.dumps(document))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    for k, (seed, acc) in enumerate([(1, 0.5), (2, 0.6), (3, 0.7)]):
        write_run(root, f"be/seed_{seed}", "BatchEnsemble", 4, seed, acc, cosine=0.9 + 0.01 * k)
    write_run(root, "be2/seed_1", "BatchEnsemble", 2, 1, 0.8)  # other num_members: own group
    write_run(root, "be_mnist/seed_1", "BatchEnsemble", 4, 1, 0.9, data="MNISTDataModule")  # other datamodule
    write_run(root, "de/seed_1", "DeepEnsemble", 4, 1, 0.75, cosine=0.1)
    write_run(root, "de/seed_2", "DeepEnsemble", 4, 2, 0.85, cosine=None, nll=None)  # null values = missing
    single = write_run(root, "single/seed_1", "SingleModel", 1, 1, 0.4, cosine=None)
    doc = json.loads((single / "results.json").read_text())
    del doc["sets"]["digits"]["ece"], doc["sets"]["photo_patches"]  # older file: keys missing
    (single / "results.json").write_text(json.dumps(doc))
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text("{not json")  # skipped with a warning
    return root


def by_method(groups, method, members=4, data="DigitsDataModule"):
    (group,) = [g for g in groups if (g.method, g.num_members, g.datamodule) == (method, members, data)]
    return group


def test_summarize_sample_std():
    assert summarize([0.5, 0.6, 0.7]) == Stat(pytest.approx(0.6), pytest.approx(0.1), 3)  # ddof = 1
    assert summarize([0.3]) == Stat(0.3, None, 1)
    assert summarize([]) == Stat(None, None, 0)
    assert format_stat(Stat(0.6, 0.1, 3), 3) == "0.600 ± 0.100"
    assert format_stat(Stat(0.3, None, 1), 1) == "0.300"
    assert format_stat(Stat(0.3, None, 1), 2) == "0.300 (n=1)"
    assert format_stat(Stat(None, None, 0), 2) == ""


def test_grouping_means_and_stds(runs, capsys):
    groups = build_report([runs])
    assert "skipping" in capsys.readouterr().err  # the broken file
    assert [(g.method, g.num_members, g.datamodule) for g in groups] == [
        ("SingleModel", 1, "DigitsDataModule"),
        ("DeepEnsemble", 4, "DigitsDataModule"),
        ("BatchEnsemble", 2, "DigitsDataModule"),
        ("BatchEnsemble", 4, "DigitsDataModule"),
        ("BatchEnsemble", 4, "MNISTDataModule"),
    ]
    be = by_method(groups, "BatchEnsemble")
    assert sorted(be.seeds) == [1, 2, 3] and len(be.runs) == 3
    assert be.stats["digits"]["acc"].mean == pytest.approx(0.6)
    assert be.stats["digits"]["acc"].std == pytest.approx(0.1)
    assert be.stats["weight space"]["weight_cosine_mean"].mean == pytest.approx(0.91)
    assert be.stats["weight space"]["weight_cosine_mean"].std == pytest.approx(0.01)
    assert be.stats["photo_patches"]["auroc_mi"] == Stat(0.5, 0.0, 3)
    assert "acc" not in be.stats["photo_patches"]  # class-based metrics are not shown for OOD sets
    de = by_method(groups, "DeepEnsemble")
    assert de.stats["digits"]["nll"] == Stat(0.2, None, 1)  # the null nll counts as missing
    assert de.stats["weight space"]["weight_cosine_mean"] == Stat(0.1, None, 1)
    single = by_method(groups, "SingleModel", members=1)
    assert single.stats["digits"]["ece"] == Stat(None, None, 0)
    assert "photo_patches" not in single.stats


def test_markdown_tables(runs):
    text = to_markdown(build_report([runs]))
    assert "### digits (id)" in text and "### photo_patches (ood)" in text and "### weight space" in text
    lines = text.splitlines()
    be_row = next(line for line in lines if line.startswith("| BatchEnsemble | 4 | DigitsDataModule | 3 |"))
    assert "0.600 ± 0.100" in be_row
    de_row = next(line for line in lines if line.startswith("| DeepEnsemble | 4 | DigitsDataModule | 2 | 0.800 ± 0.071"))
    assert "0.200 (n=1)" in de_row
    single_row = next(line for line in lines if line.startswith("| SingleModel | 1 | DigitsDataModule | 1 | 0.400 |"))
    assert "|  |" in single_row  # missing ece: a blank cell


def test_cli_report_writes_csv_markdown_json(runs, tmp_path, capsys):
    out = tmp_path / "out"
    main(["report", str(runs), "--out", str(out), "--sets", "digits"])
    printed = capsys.readouterr().out
    assert "### digits (id)" in printed and "photo_patches" not in printed
    assert (out / "report.md").read_text() in printed
    rows = list(csv.DictReader((out / "report.csv").open()))
    row = next(r for r in rows if r["method"] == "BatchEnsemble" and r["num_members"] == "4"
               and r["datamodule"] == "DigitsDataModule" and r["metric"] == "acc")  # fmt: skip
    assert float(row["mean"]) == pytest.approx(0.6) and float(row["std"]) == pytest.approx(0.1) and row["n"] == "3"
    document = json.loads((out / "report.json").read_text())
    single = next(g for g in document if g["method"] == "SingleModel")
    assert single["stats"]["digits"]["acc"] == {"mean": 0.4, "std": None, "n": 1}


@pytest.mark.parametrize("make", ["empty", "missing", "bad_set", "out_is_a_file"])
def test_clear_errors(tmp_path, capsys, runs, make):
    args = {
        "empty": [str(tmp_path / "empty")],
        "missing": [str(tmp_path / "nope")],
        "bad_set": [str(runs), "--sets", "cifar10"],
        "out_is_a_file": [str(runs), "--out", str(tmp_path / "notes.txt")],
    }[make]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    message = {
        "empty": "no readable results.json found",
        "missing": "does not exist",
        "bad_set": "no such test set",
        "out_is_a_file": "is a file; give a directory",
    }[make]
    assert "ensemble-lab: error: " in err and message in err and "Traceback" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine" and "| method |" not in capsys.readouterr().out


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_runs_set_aside_by_a_study_are_not_found(tmp_path):
    from ensemble_lab.report.reading import find_results

    write_run(tmp_path, "be/seed_1", "BatchEnsemble", 4, 1, 0.5)
    write_run(tmp_path, "be/seed_1.prev-1", "BatchEnsemble", 4, 1, 0.1)  # moved aside by --rerun_changed
    assert find_results([tmp_path]) == [(tmp_path / "be" / "seed_1" / "results.json").resolve()]
    aside = tmp_path / "be" / "seed_1.prev-1"
    assert find_results([aside]) == [(aside / "results.json").resolve()]  # asked for by name: found


def with_config(run: Path, run_name: str | None = None, **trained) -> Path:
    """Give a hand-written run a resolved config (trainer / model options) and a label, as the CLI records them."""
    doc = json.loads((run / "results.json").read_text())
    seed = doc["seed"]
    doc["config"] = {"seed_everything": seed, "trainer": {"max_epochs": trained.get("max_epochs", 30), "logger": f"run-{seed}"},
                     "model": {"class_path": doc["method"], "init_args": {"lr": trained.get("lr", 0.003)}}}  # fmt: skip
    if run_name is not None:
        doc["run_name"] = run_name
    (run / "results.json").write_text(json.dumps(doc))
    return run


def test_runs_trained_differently_are_not_pooled_and_the_report_says_why(tmp_path, capsys):
    # three 30-epoch Deep Ensembles and one of 3 epochs: two rows (n=3 and n=1), never one of n=4
    for seed, acc in [(1, 0.80), (2, 0.82), (3, 0.84)]:
        with_config(write_run(tmp_path, f"de/seed_{seed}", "DeepEnsemble", 4, seed, acc))
    with_config(write_run(tmp_path, "short/seed_4", "DeepEnsemble", 4, 4, 0.40), max_epochs=3)
    groups = build_report([tmp_path])
    rows = sorted((g.variant, len(g.runs), g.stats["digits"]["acc"].mean) for g in groups)
    assert rows == [("trainer.max_epochs=3", 1, 0.40), ("trainer.max_epochs=30", 3, pytest.approx(0.82))]
    assert (
        "DeepEnsemble (M=4, DigitsDataModule): 4 runs were trained or tested differently and are not pooled: 2 rows, by trainer.max_epochs"
        in capsys.readouterr().err
    )
    table = to_markdown(groups)
    assert "| DeepEnsemble [trainer.max_epochs=30] | 4 | DigitsDataModule | 3 |" in table
    assert "- DeepEnsemble rows differ in `trainer.max_epochs`" in table


def test_run_names_are_rows_of_their_own_and_seeds_or_placement_do_not_split(tmp_path, capsys):
    for seed in (1, 2):  # seeds and logger differ: pooled
        with_config(write_run(tmp_path, f"a/seed_{seed}", "BatchEnsemble", 4, seed, 0.5 + seed / 10), run_name="be_normal")
    with_config(write_run(tmp_path, "b/seed_1", "BatchEnsemble", 4, 1, 0.9), run_name="be_fast", lr=0.01)
    groups = build_report([tmp_path])
    assert sorted((g.label, g.variant, len(g.runs)) for g in groups) == [("be_fast", None, 1), ("be_normal", None, 2)]
    assert "not pooled" not in capsys.readouterr().err
    table = to_markdown(groups)
    assert "- BatchEnsemble rows differ in `model.init_args.lr` (be_fast (BatchEnsemble): 0.01; be_normal (BatchEnsemble): 0.003)" in table
    assert "3 runs." in table and "1 runs" not in to_markdown(build_report([tmp_path / "b"]))


def test_runs_that_differ_only_in_what_they_print_pool(tmp_path, capsys):
    """A progress bar or model summary changes nothing a run trains or writes: one row, not one per setting."""
    for seed, bar in ((1, True), (2, False)):
        run = with_config(write_run(tmp_path, f"s/seed_{seed}", "SingleModel", 1, seed, 0.8))
        doc = json.loads((run / "results.json").read_text())
        doc["config"]["trainer"].update(enable_progress_bar=bar, enable_model_summary=bar)
        (run / "results.json").write_text(json.dumps(doc))
    (group,) = build_report([tmp_path])
    assert len(group.runs) == 2 and "not pooled" not in capsys.readouterr().err


def test_rows_of_a_sweep_sort_by_their_numbers(tmp_path):
    for width in (1024, 16, 256, 64):
        with_config(write_run(tmp_path, f"be_w{width}/seed_1", "BatchEnsemble", 4, 1, 0.9), run_name=f"be_w{width}", lr=width / 1e5)
    assert [g.label for g in build_report([tmp_path])] == ["be_w16", "be_w64", "be_w256", "be_w1024"]  # not be_w1024 first


def test_cost_table_and_quality_against_cost_figure(tmp_path):
    root = tmp_path / "study"
    costs = {"SingleModel": (1, 10_000, 50_000.0), "BatchEnsemble": (4, 10_300, 14_000.0), "DeepEnsemble": (4, 40_000, 12_000.0)}
    for method, (members, parameters, rate) in costs.items():
        for seed in (1, 2):
            run = write_run(root, f"{method}/seed_{seed}", method, members, seed, 0.9)
            doc = json.loads((run / "results.json").read_text())
            doc["cost"] = {"parameters": parameters, "parameters_per_member": parameters // members,
                           "flops_per_image": 2.0 * parameters, "images_per_s": rate + 1000 * seed, "peak_memory_bytes": None,
                           "peak_tensor_bytes": 4 * parameters}  # fmt: skip
            (run / "results.json").write_text(json.dumps(doc))
    write_run(root, "old/seed_1", "MCDropout", 4, 1, 0.8)  # tested before costs were measured: no cost row
    groups = build_report([root])
    text = to_markdown(groups)
    cost_table = text[text.index("### cost") :]
    assert "| DeepEnsemble | 4 | DigitsDataModule | 2 | 40,000 ± 0 | 10,000 ± 0 | 80,000 ± 0 | 13,500 ± 707 | 160,000 ± 0 |" in cost_table
    assert "peak_tensor_bytes" in cost_table and "peak_memory_bytes" not in cost_table  # CUDA's: blank on every CPU run
    assert "MCDropout" not in cost_table.split("###")[1]
    from ensemble_lab.report.tables import quality_cost

    figure = quality_cost(groups)
    assert [a.get_xlabel() for a in figure.axes[:3]] == ["images per s", "parameters", "peak tensor MiB"]
    markers = sorted(float(line.get_xdata()[0]) for line in figure.axes[2].lines if line.get_marker() not in ("|", "_"))  # not caps
    assert markers == pytest.approx(sorted(4 * p / 2**20 for _, p, _ in costs.values()))  # bytes drawn in MiB
    main(["report", str(root), "--out", str(tmp_path / "out")])
    figure = tmp_path / "out" / "quality_vs_cost.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_option_added_since_a_run_pools_with_runs_holding_its_default(tmp_path, capsys):
    # seed 1 was recorded before `teacher` / `distill_alpha` existed; seed 2 holds their defaults; seed 3 set one
    for seed, extra in [(1, {}), (2, {"teacher": None, "distill_alpha": 0.5}), (3, {"distill_alpha": 0.9})]:
        run = with_config(write_run(tmp_path, f"be/seed_{seed}", "BatchEnsemble", 4, seed, 0.8))
        doc = json.loads((run / "results.json").read_text())
        doc["config"]["model"]["class_path"] = "ensemble_lab.methods.BatchEnsemble"  # its defaults are the class's
        doc["config"]["model"]["init_args"].update(extra)
        (run / "results.json").write_text(json.dumps(doc))
    rows = sorted((g.variant, len(g.runs)) for g in build_report([tmp_path]))
    assert rows == [("distill_alpha=(default)", 2), ("distill_alpha=0.9", 1)]


def test_the_cost_figure_gives_each_method_the_colour_it_has_in_every_comparison_figure(tmp_path):
    from matplotlib.colors import to_hex

    from ensemble_lab.report.figures import draw_figures
    from ensemble_lab.report.groups import run_groups
    from ensemble_lab.report.tables import quality_cost

    for k, method in enumerate(["SingleModel", "MCDropout", "DeepEnsemble", "BatchEnsemble"]):
        for seed in (1, 2):
            run = write_run(tmp_path, f"{method}/seed_{seed}", method, 4, seed, 0.8 + k / 100)
            doc = json.loads((run / "results.json").read_text())
            doc["cost"] = {"parameters": 1000 * (k + 1), "images_per_s": 150_000.0 * (k + 1) + seed}
            (run / "results.json").write_text(json.dumps(doc))
    groups = build_report([tmp_path])
    cost = quality_cost(groups)
    diversity = draw_figures(run_groups(groups))["diversity_digits"]

    def colours(legend) -> dict[str, str]:
        return {t.get_text().replace("\n", " "): to_hex(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles)}

    in_cost, in_diversity = colours(cost.legends[0]), colours(diversity.axes[-1].get_legend())
    assert len(in_cost) == 4 and in_cost == in_diversity
    assert len(set(in_cost.values())) == 4
    cost.canvas.draw()  # tick labels are set when drawn
    ticks = [t.get_text() for ax in cost.axes for t in ax.get_xticklabels() if t.get_text()]
    assert ticks and not any("$" in t for t in ticks)  # 200k, 500k, 1M: no mathtext powers that collide


@pytest.mark.parametrize(
    "damage, says",
    [({"sets": [1, 2]}, "its 'sets' is list"), ({"num_members": [4]}, "its 'num_members' is list"),
     ({"sets": {"digits": 3}}, "its sets.digits is int")],
)  # fmt: skip
def test_a_results_json_of_the_wrong_shape_is_skipped_with_a_line(tmp_path, capsys, damage, says):
    """Valid JSON with a key of the wrong type crashed the report with a TypeError."""
    write_run(tmp_path, "good", "SingleModel", 1, 1, 0.8)
    bad = write_run(tmp_path, "bad", "SingleModel", 1, 2, 0.8)
    document = json.loads((bad / "results.json").read_text())
    (bad / "results.json").write_text(json.dumps({**document, **damage}))
    (group,) = build_report([tmp_path])
    assert len(group.runs) == 1
    err = capsys.readouterr().err
    assert f"skipping {bad / 'results.json'}: {says}" in err


@pytest.mark.parametrize("document", [{"epoch": 3, "val_loss": 0.2}, {"method": None, "sets": None, "seed": 1}, {"method": "SingleModel"}])
def test_a_json_file_named_results_json_that_is_not_a_run_is_skipped_with_a_line(tmp_path, capsys, document):
    """Another tool's results.json was counted as a run: a row of blanks, and one run too many in the total."""
    write_run(tmp_path, "good", "SingleModel", 1, 1, 0.8)
    other = tmp_path / "other_tool" / "results.json"
    other.parent.mkdir()
    other.write_text(json.dumps(document))
    (group,) = build_report([tmp_path])
    assert group.method == "SingleModel" and len(group.runs) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if str(other) in line]
    assert line.startswith(f"ensemble-lab report: skipping {other}: not a results document") and "missing" in line
    assert "1 run." in to_markdown([group])


def test_runs_tested_alike_but_trained_differently_are_not_pooled_and_older_files_still_pool(tmp_path, capsys):
    """results.json's config is what a test ran with and fit_config what training did (where a test changed
    options): two MC Dropout runs tested at dropout 0.3, one trained at 0.1 and one at 0.3, are two rows; a run
    written before fit_config existed (config only) pools with a new one tested as it was trained."""
    def tested(name: str, seed: int, acc: float, trained_dropout: float | None, tested_dropout: float = 0.3) -> None:
        run = with_config(write_run(tmp_path, name, "MCDropout", 4, seed, acc))
        doc = json.loads((run / "results.json").read_text())
        doc["config"]["model"]["init_args"]["dropout"] = tested_dropout
        if trained_dropout is not None:  # written by this version: what the test changed, and the training's options
            fit = json.loads(json.dumps(doc["config"]))
            fit["model"]["init_args"]["dropout"] = trained_dropout
            changed = trained_dropout != tested_dropout
            doc["test_changes"] = [f"model.init_args.dropout: {trained_dropout} -> {tested_dropout}"] if changed else []
            doc["fit_config"] = fit if changed else None
        (run / "results.json").write_text(json.dumps(doc))

    tested("low/seed_1", 1, 0.6, trained_dropout=0.1)
    tested("high/seed_2", 2, 0.8, trained_dropout=0.3)
    tested("old/seed_3", 3, 0.7, trained_dropout=None)  # an older file: no test_changes, no fit_config
    groups = build_report([tmp_path])
    rows = sorted((g.variant, sorted(r.parent.name for r in g.runs), g.stats["digits"]["acc"].mean) for g in groups)
    assert rows == [("dropout (fit)=0.1", ["low"], 0.6), ("dropout (fit)=0.3", ["high", "old"], pytest.approx(0.75))]
    assert "3 runs were trained or tested differently and are not pooled: 2 rows, by model.init_args.dropout (fit)" in capsys.readouterr().err


def test_regression_runs_get_their_own_columns_and_the_gap_sets_errors(tmp_path: Path):
    """A report of regression runs shows rmse, crps, coverage and the epistemic share (not blank classification
    columns), and the gap (ood) set's errors beside its detection scores, each the mean over the runs."""
    rng = np.random.default_rng(0)
    values = {seed: {k: float(rng.uniform(1, 2)) for k in ("rmse", "nll", "crps", "coverage_90", "width_90", "epistemic_share", "auroc_variance")} for seed in (1, 2)}
    for seed, v in values.items():
        run = tmp_path / "be" / f"seed_{seed}"
        run.mkdir(parents=True)
        sets = {"diabetes": {"role": "id", **v}, "diabetes_gap": {"role": "ood", **v, "auroc_epistemic": None}}
        (run / "results.json").write_text(json.dumps({"method": "BatchEnsemble", "num_members": 4, "seed": seed,
                                                      "datamodule": "TabularDataModule", "sets": sets}))  # fmt: skip
    (group,) = build_report([tmp_path])
    assert {"rmse", "crps", "coverage_90", "width_90", "epistemic_share"} <= set(group.stats["diabetes"])
    for key in ("rmse", "crps", "coverage_90", "epistemic_share"):
        assert group.stats["diabetes"][key].mean == pytest.approx(np.mean([v[key] for v in values.values()]))
    for key in ("rmse", "nll", "crps", "auroc_variance"):  # the gap keeps its targets: its errors are reported
        assert group.stats["diabetes_gap"][key].mean == pytest.approx(np.mean([v[key] for v in values.values()]))
    table = to_markdown([group])
    assert "| rmse |" in table.replace("| nll | rmse |", "| rmse |") and "| acc |" not in table  # no blank classification column


def test_runs_of_one_method_on_other_uci_splits_are_pooled_but_not_other_tables(tmp_path):
    """A tabular run's --data.split is a replicate, like its seed (the UCI benchmark is the mean over splits);
    another --data.dataset is another experiment."""
    for seed, table in [(0, "yacht"), (1, "yacht"), (2, "energy")]:
        run = with_config(write_run(tmp_path, f"tabm/seed_{seed}", "BatchEnsemble", 32, seed, 0.5 + seed / 10), run_name="tabm")
        doc = json.loads((run / "results.json").read_text())
        doc["config"]["data"] = {"class_path": "TabularDataModule", "init_args": {"dataset": table, "split": seed}}
        (run / "results.json").write_text(json.dumps(doc))
    groups = build_report([tmp_path])
    assert sorted((g.variant, len(g.runs)) for g in groups) == [("data.init_args.dataset=energy", 1), ("data.init_args.dataset=yacht", 2)]
