"""Comparison figures of a report, drawn from a tiny synthetic study written by the test (no training)."""

import inspect
import json
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.utils.tensorboard import SummaryWriter

from ensemble_lab.errors import ConfigError
from ensemble_lab.figures.style import PALETTE, label_colours
from ensemble_lab.methods import BatchEnsemble
from ensemble_lab.metrics.classification import predictive_metrics
from ensemble_lab.metrics.ood import ood_metrics
from ensemble_lab.report.figures import RunGroup, backbone_dims, draw_figures, draw_report_figures, looks, sweeps
from ensemble_lab.report.training_curves import read_scalars
from ensemble_lab.runs.results import write_predictions

ROLES = {"digits": "id", "noisy": "shift", "photos": "ood"}
TAGS = ("val/acc", "val/nll", "val/mi", "val/disagreement", "val/weight_cosine")
N, C, EPOCHS, STEPS_PER_EPOCH = 60, 4, 4, 5


def curve(seed: int, tag: str, epoch: int) -> float:
    """The value a synthetic run logs: distinct per run, tag and epoch."""
    return 0.1 * seed + 0.01 * TAGS.index(tag) + 0.001 * epoch


def write_run(run_dir, method, label, num_members, seed, predictions=True, resumed=False):
    """A run directory as fit + test leave it: results.json, predictions/<set>.npz, TensorBoard event files."""
    gen = torch.Generator().manual_seed(seed)
    collected = {}
    for k, name in enumerate(ROLES):
        logits = torch.randn(num_members, N, C, generator=gen) * (3.0 - k)  # flatter for shift / ood
        collected[name] = (logits.softmax(-1), torch.randint(0, C, (N,), generator=gen))
    sets = {name: {"role": role, **predictive_metrics(*collected[name])} for name, role in ROLES.items()}
    sets["photos"].update(ood_metrics(collected["digits"][0], collected["photos"][0]))
    doc = {"method": method, "run_name": label, "num_members": num_members, "seed": seed, "sets": sets}
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(doc))
    if predictions:
        for name, (probs, targets) in collected.items():
            write_predictions(run_dir, name, probs.numpy(), targets.numpy())
    sessions = [range(EPOCHS)] if not resumed else [range(3), range(2, EPOCHS)]  # the resume re-logs epoch 2
    for n, epochs in enumerate(sessions):
        writer = SummaryWriter(str(run_dir), filename_suffix=f".{n}")
        for epoch in epochs:
            step = (epoch + 1) * STEPS_PER_EPOCH - 1
            writer.add_scalar("epoch", epoch, step)
            for tag in TAGS if num_members > 1 and method != "MCDropout" else TAGS[:-1]:
                stale = 5.0 if resumed and n == 0 and epoch == 2 else 0.0  # the first session's epoch 2 is replaced
                writer.add_scalar(tag, curve(seed, tag, epoch) + stale, step)
        writer.close()
    return run_dir, collected, doc


def write_curves(run_dir, curves, suffix=".0"):
    """TensorBoard event files as fit leaves them: ``epoch`` and each {tag: [value per epoch]} at every epoch's last step."""
    writer = SummaryWriter(str(run_dir), filename_suffix=suffix)
    for epoch in range(max(len(values) for values in curves.values())):
        step = (epoch + 1) * STEPS_PER_EPOCH - 1
        writer.add_scalar("epoch", epoch, step)
        for tag, values in curves.items():
            if epoch < len(values):
                writer.add_scalar(tag, values[epoch], step)
    writer.close()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Groups of a synthetic study: a single model (2 seeds), a Deep Ensemble (2 seeds, one resumed), BatchEnsemble at M = 2 and 4."""
    root = tmp_path_factory.mktemp("study")
    spec = [("single", "SingleModel", 1, 2), ("deep_ensemble", "DeepEnsemble", 4, 2), ("batch_ensemble", "BatchEnsemble", 2, 1),
            ("batch_ensemble", "BatchEnsemble", 4, 1)]  # fmt: skip
    groups, runs = [], {}
    for label, method, m, seeds in spec:
        made = [write_run(root / f"{label}_m{m}" / f"seed_{s}", method, label, m, s, resumed=(label == "deep_ensemble" and s == 1))
                for s in range(seeds)]  # fmt: skip
        group = RunGroup(f"{label}, M={m}", label, method, m, tuple(r for r, _, _ in made))
        groups.append(group)
        runs[group.name] = made
    return groups, runs


@pytest.fixture(scope="module")
def figures(study):
    """Every comparison figure of the synthetic study, drawn once."""
    return draw_figures(study[0])


def legend_texts(fig):
    return [t.get_text() for ax in fig.axes for legend in [ax.get_legend()] if legend for t in legend.get_texts()] + [
        t.get_text() for legend in fig.legends for t in legend.get_texts()
    ]


def hand_ece(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """ECE by a loop over 15 equal-width bins (upper edges inclusive)."""
    confidence, correct = probs.max(1), probs.argmax(1) == targets
    total = 0.0
    for b in range(bins):
        inside = (confidence > b / bins) & (confidence <= (b + 1) / bins) if b else confidence <= 1 / bins
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_reliability_panels_titles_and_counts(study, figures):
    groups, runs = study
    fig = figures["reliability_digits"]
    assert len(fig.axes) == 2 * len(groups)  # a diagram and its samples-per-bin histogram per row
    for k, group in enumerate(groups):
        diagram, counts = fig.axes[2 * k], fig.axes[2 * k + 1]
        pooled = np.concatenate([c["digits"][0].numpy().mean(0) for _, c, _ in runs[group.name]])  # (runs · N, C)
        targets = np.concatenate([c["digits"][1].numpy() for _, c, _ in runs[group.name]])
        title = diagram.get_title().replace("\n", " ")
        assert group.name in title and f"ECE {hand_ece(pooled, targets):.3f}" in title
        assert sum(p.get_height() for p in counts.patches) == len(targets)
        assert counts.get_xlabel() == "confidence (max p̄)" and counts.get_yscale() == "log"
    assert fig.axes[0].get_ylabel() == "accuracy"
    assert "reliability_photos" not in figures  # ood sets have no labels to calibrate against


def test_risk_coverage_curves_per_row_with_aurc(study, figures):
    groups, runs = study
    fig = figures["risk_coverage_noisy"]
    (ax,) = fig.axes
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    for k, group in enumerate(groups):
        pooled = np.concatenate([c["noisy"][0].numpy().mean(0) for _, c, _ in runs[group.name]])  # (runs · N, C)
        targets = np.concatenate([c["noisy"][1].numpy() for _, c, _ in runs[group.name]])
        # a numpy loop: the error rate among the k most confident, k = 1..N (no ties in random data), and its mean
        order = np.argsort(-pooled.max(-1), kind="stable")
        wrong = (pooled.argmax(-1) != targets)[order]
        risk = np.array([wrong[:k].mean() for k in range(1, len(wrong) + 1)])
        assert legend[k] == f"{group.name}: {risk.mean():.4f}"
        np.testing.assert_allclose(ax.lines[k].get_ydata(), risk, atol=1e-12)
        np.testing.assert_allclose(ax.lines[k].get_xdata(), np.arange(1, len(risk) + 1) / len(risk))
    assert "risk_coverage_photos" not in figures  # no labels on an ood set


def test_ood_curves_legend_auroc_aupr(study, figures):
    groups, runs = study
    assert {f"ood_{k}_photos_{s}" for k in ("roc", "pr") for s in ("msp", "entropy", "mi")} <= set(figures)
    roc, pr = figures["ood_roc_photos_msp"], figures["ood_pr_photos_msp"]
    texts, pr_texts = legend_texts(roc), legend_texts(pr)
    assert len(texts) == len(groups)
    for group, text, pr_text in zip(groups, texts, pr_texts):
        msp = [1 - c[name][0].numpy().mean(0).max(1) for _, c, _ in runs[group.name] for name in ("digits", "photos")]
        id_scores, ood_scores = np.concatenate(msp[0::2]), np.concatenate(msp[1::2])
        labels = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
        assert text == f"{group.name}: {roc_auc_score(labels, np.r_[id_scores, ood_scores]):.3f}"
        assert pr_text == f"{group.name}: {average_precision_score(labels, np.r_[id_scores, ood_scores]):.3f}"
    assert roc.axes[0].get_xlabel() == "false-positive rate (id)" and pr.axes[0].get_ylabel() == "precision"
    # a single model's mi is 0 on every sample: it has no mi curve
    assert [t.split(":")[0] for t in legend_texts(figures["ood_roc_photos_mi"])] == [g.name for g in groups[1:]]


def test_diversity_scatter_one_marker_per_run(study, figures):
    groups, runs = study
    fig = figures["diversity_noisy"]
    assert len(fig.axes) == 3  # two panels and the legend
    left = fig.axes[0]
    assert (left.get_xlabel(), left.get_ylabel(), fig.axes[1].get_xlabel(), fig.axes[1].get_ylabel()) == (
        "disagreement", "accuracy", "mi (epistemic)", "NLL",
    )  # fmt: skip
    for collection, group in zip(left.collections, groups):
        expected = [(d["sets"]["noisy"]["disagreement"], d["sets"]["noisy"]["acc"]) for _, _, d in runs[group.name]]
        np.testing.assert_allclose(collection.get_offsets(), expected)
    assert legend_texts(fig) == [g.name for g in groups]
    assert figures["diversity_photos"].axes[0].get_ylabel() == "AUROC (msp)"


def test_training_curves_mean_std_and_resume(study, figures):
    groups, runs = study
    resumed = read_scalars(runs["deep_ensemble, M=4"][1][0], TAGS)
    assert resumed["val/acc"][3 * STEPS_PER_EPOCH - 1] == pytest.approx(curve(1, "val/acc", 2))  # the resume's value won
    fig = figures["training_curves"]
    assert [ax.get_title() for ax in fig.axes[:5]] == list(TAGS)
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes[:5])
    lines = fig.axes[0].get_lines()
    assert len(lines) == len(groups)
    de = lines[1]  # the Deep Ensemble: mean of seeds 0 and 1 at epochs 1..EPOCHS
    np.testing.assert_allclose(de.get_xdata(), np.arange(1, EPOCHS + 1))
    np.testing.assert_allclose(de.get_ydata(), [np.mean([curve(s, "val/acc", e) for s in (0, 1)]) for e in range(EPOCHS)])
    band = fig.axes[0].collections[1].get_paths()[0].vertices[:, 1]  # the ± std band of the Deep Ensemble
    assert band.max() == pytest.approx(max(np.mean([curve(s, "val/acc", e) for s in (0, 1)]) for e in range(EPOCHS)) + 0.1 / np.sqrt(2))
    assert len(fig.axes[4].get_lines()) == 3  # the single model has no weight cosine
    assert legend_texts(fig) == [g.name for g in groups]


def test_ensemble_size_per_label(study, figures):
    groups, runs = study
    fig = figures["ensemble_size"]
    assert [ax.get_title() for ax in fig.axes[:5]] == ["digits acc", "digits nll", "digits ece", "digits mi", "photos auroc_msp"]
    (bars,) = fig.axes[0].containers  # only BatchEnsemble's label has several M
    line = bars.lines[0]
    np.testing.assert_allclose(line.get_xdata(), [2, 4])
    np.testing.assert_allclose(line.get_ydata(), [runs[f"batch_ensemble, M={m}"][0][2]["sets"]["digits"]["acc"] for m in (2, 4)])
    assert fig.axes[0].get_xlabel() == "members M"
    assert legend_texts(fig) == ["batch_ensemble (BatchEnsemble)"]


def test_colours_per_label_in_paper_order():
    pairs = [("be_rank2", "BatchEnsemble"), ("de", "DeepEnsemble"), ("mine", None), ("single", "SingleModel")]
    colours = label_colours(pairs)
    assert colours == label_colours(reversed(pairs))  # independent of the order rows come in
    assert [colours[label][0] for label in ("single", "de", "be_rank2", "mine")] == list(PALETTE[:4])


def test_labels_beyond_the_palette_share_a_colour_never_a_marker_too():
    """A report of more labels than colours (a tabular study's 3 tables x 7 methods): the colours repeat, the (colour,
    marker) pairs do not, so a line's marker still tells two rows of one colour apart."""
    pairs = [(f"label_{k:02d}", None) for k in range(3 * len(PALETTE))]
    looks_of = label_colours(pairs)
    assert [looks_of[label][0] for label, _ in pairs] == [PALETTE[k % len(PALETTE)] for k in range(len(pairs))]
    assert len(set(looks_of.values())) == len(pairs)


def test_draw_report_figures_writes_formats(tmp_path):
    run, _, _ = write_run(tmp_path / "runs" / "be", "BatchEnsemble", "be", 2, 5)
    (run / "predictions" / "photos.npz").unlink()  # no OOD curves: the other tests look at them; this one at the files
    paths = draw_report_figures([RunGroup("be, M=2", "be", "BatchEnsemble", 2, (run,))], tmp_path / "out", ("png", "pdf", "svg"), dpi=40)
    stems = {"reliability_digits", "reliability_noisy", "diversity_digits", "diversity_noisy", "diversity_photos", "training_curves"}
    stems |= {"risk_coverage_digits", "risk_coverage_noisy"}
    assert sorted(p.name for p in paths) == sorted(f"{stem}.{fmt}" for stem in stems for fmt in ("png", "pdf", "svg"))
    assert sorted(p.name for p in (tmp_path / "out" / "figures").iterdir()) == sorted(p.name for p in paths)  # no temporary files left
    for path in paths:
        head = path.read_bytes()[:8]
        if path.suffix == ".png":
            assert head == b"\x89PNG\r\n\x1a\n"
        elif path.suffix == ".pdf":
            assert head[:5] == b"%PDF-"
        else:
            assert ElementTree.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    with pytest.raises(ConfigError, match="tiff"):
        draw_report_figures([], tmp_path / "out", ("tiff",))


def test_missing_inputs_say_why(tmp_path, capsys):
    run, _, _ = write_run(tmp_path / "a", "DeepEnsemble", "de", 2, 3, predictions=False)
    for event in run.glob("events.out.tfevents.*"):
        event.unlink()
    figures = draw_figures([RunGroup("de, M=2", "de", "DeepEnsemble", 2, (run,))])
    assert set(figures) == {"diversity_digits", "diversity_noisy", "diversity_photos"}  # results.json alone
    err = capsys.readouterr().err
    assert "no reliability_digits figure" in err and "--save_predictions true" in err
    assert "no training_curves figure" in err and "no ensemble_size figure" in err


def test_sweep_lines_per_label_or_joined_per_method():
    def row(label, method, m):
        return RunGroup(f"{label}, M={m}", label, method, m, ())

    groups = [row("be", "BatchEnsemble", 2), row("be", "BatchEnsemble", 4), row("de_m2", "DeepEnsemble", 2), row("de_m8", "DeepEnsemble", 8),
              row("mcd", "MCDropout", 4), row("mcd_wide", "MCDropout", 4)]  # fmt: skip
    # be: one label, two M; de_m2 + de_m8: a study's names per M, joined by class; the MC Dropout rows share M = 4: no line
    assert sweeps(groups) == [(None, [0, 1]), (None, [2, 3])]
    seen = looks(groups)
    assert seen[0].colour == seen[1].colour and (seen[0].linestyle, seen[1].linestyle) == ("-", "--")
    assert seen[0].marker != seen[1].marker and seen[2].colour != seen[3].colour
    assert [look.name for look in seen][:2] == ["be, M=2", "be, M=4"]
    assert looks([RunGroup("be", "be", "BatchEnsemble", 4, ())])[0].name == "be, M=4"  # M added where the name lacks it


def test_scale_figure_plots_each_method_against_its_members_parameters(tmp_path):
    """A width sweep written by hand: three BatchEnsemble rows (a study's be_w8, be_w16, be_w32), two seeds each."""
    groups, docs = [], {}
    for width, parameters in ((8, 100), (16, 400), (32, 1600)):
        runs = []
        for seed in range(2):
            run, _, doc = write_run(tmp_path / f"be_w{width}" / f"seed_{seed}", "BatchEnsemble", f"be_w{width}", 2, seed + 10 * width)
            doc.update(cost={"parameters_per_member": parameters}, weight_cosine_mean=0.1 * seed + width / 100)
            (run / "results.json").write_text(json.dumps(doc))
            runs.append(run)
            docs.setdefault(parameters, []).append(doc)
        groups.append(RunGroup(f"be_w{width}, M=2", f"be_w{width}", "BatchEnsemble", 2, tuple(runs)))
    figure = draw_figures(groups)["scale"]
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    assert set(panels) == {"digits acc", "digits mi", "digits disagreement", "weight cosine (effective)", "photos auroc_mi"}
    for title, ax in panels.items():
        set_name, metric = title.split(" ") if title.startswith(("digits", "photos")) else (None, "weight_cosine_mean")
        (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() != "None"]  # one line (error-bar caps aside): the three rows joined
        assert list(line.get_xdata()) == [100, 400, 1600] and ax.get_xscale() == "log"
        expected = [np.mean([d[metric] if set_name is None else d["sets"][set_name][metric] for d in docs[p]]) for p in (100, 400, 1600)]
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    assert "parameters per member" in {ax.get_xlabel() for ax in panels.values()}


def test_a_depth_sweep_and_a_width_sweep_of_one_method_are_two_lines():
    """be_w16 .. be_w256 at depth 3 and be_d2, be_d4 at width 64: be_w64 is the centre of both sweeps."""
    names = ["be_w16", "be_w64", "be_w256", "be_d2", "be_d4", "be_odd"]
    dims = [{"depth": 3, "width": 16}, {"depth": 3, "width": 64}, {"depth": 3, "width": 256},
            {"depth": 2, "width": 64}, {"depth": 4, "width": 64}, {"depth": 5, "width": 32}]  # fmt: skip
    sizes = [10.0, 40.0, 160.0, 30.0, 50.0, 70.0]  # parameters per member, all different
    groups = [RunGroup(f"{n}, M=4", n, "BatchEnsemble", 4, ()) for n in names]
    # the odd row (depth 5, width 32) shares no other dimension with any row: on no line
    assert sweeps(groups, sizes, dims) == [("depth", [3, 1, 4]), ("width", [0, 1, 2])]
    width_only = [0, 1, 2]
    pick = [groups[k] for k in width_only], [sizes[k] for k in width_only], [dims[k] for k in width_only]
    assert sweeps(*pick) == [(None, [0, 1, 2])]  # one sweep: unnamed, as before
    joined = [(None, [0, 3, 1, 4, 5, 2])]  # every row, by size
    assert sweeps(groups, sizes, [None, *dims[1:]]) == joined  # a row without dimensions: joined as before
    assert sweeps(groups, sizes) == joined


def test_backbone_dims_read_the_runs_recorded_config():
    def doc(**options):
        return {"config": {f"model.init_args.{k}": v for k, v in options.items()}}

    assert backbone_dims([doc(backbone="mlp", hidden_sizes=[256, 128, 64])] * 2) == {"depth": 3, "width": 256}
    assert backbone_dims([doc(backbone="mlp", hidden_sizes=None, width=None)]) == {"depth": 3, "width": 64}  # the default 64-32-16
    assert backbone_dims([doc(backbone="resnet18", width=32, hidden_sizes=[64, 32, 16])]) == {"width": 32}
    assert backbone_dims([doc(backbone="wide_resnet", depth=16, widen_factor=4)]) == {"depth": 16, "width": 4}
    assert backbone_dims([doc(backbone="mlp", hidden_sizes=[8]), doc(backbone="mlp", hidden_sizes=[16])]) is None  # runs disagree
    assert backbone_dims([{}]) is None and backbone_dims([doc(backbone="no_such_backbone")]) is None


def test_scale_figure_names_the_depth_and_the_width_line(tmp_path):
    rows = {"be_w16": [16, 8], "be_w64": [64, 32], "be_d3": [64, 32, 16]}  # width sweep at depth 2; depth sweep at width 64
    groups = []
    for k, (label, hidden) in enumerate(rows.items()):
        run, _, doc = write_run(tmp_path / label / "seed_0", "BatchEnsemble", label, 2, k)
        doc.update(cost={"parameters_per_member": 100 * (k + 1)}, weight_cosine_mean=0.5,
                   config={"model.init_args.backbone": "mlp", "model.init_args.hidden_sizes": hidden})  # fmt: skip
        (run / "results.json").write_text(json.dumps(doc))
        groups.append(RunGroup(f"{label}, M=2", label, "BatchEnsemble", 2, (run,)))
    ax = next(ax for ax in draw_figures(groups)["scale"].axes if ax.get_title() == "digits acc")
    lines = [ln for ln in ax.get_lines() if ln.get_linestyle() != "None"]
    assert sorted(list(ln.get_xdata()) for ln in lines) == [[100, 200], [200, 300]]  # be_w64 is on both
    legend = {t.get_text() for other in ax.figure.axes if (box := other.get_legend()) for t in box.get_texts()}
    assert legend == {"BatchEnsemble (width)", "BatchEnsemble (depth)"}  # a joined line is named by its method


def write_m_study(root, rows):
    """Runs as a study writes them (no predictions, no event files): (label, method, M, extra model options, acc per seed)."""
    for label, method, m, extra, accs in rows:
        for seed, acc in enumerate(accs):
            run = root / label / f"seed_{seed}"
            run.mkdir(parents=True)
            doc = {"method": method, "run_name": label, "num_members": m, "seed": seed, "datamodule": "DigitsDataModule",
                   "sets": {"digits": {"role": "id", "acc": acc, "nll": 1 - acc, "ece": 0.05, "mi": 0.01 * m}},
                   "config": {"seed_everything": seed, "trainer": {"max_epochs": 30},
                              "model": {"class_path": f"ensemble_lab.methods.{method}", "init_args": {"num_members": m, **extra}}}}  # fmt: skip
            (run / "results.json").write_text(json.dumps(doc))


def report_figures_of(root):
    from ensemble_lab.report.groups import build_report, run_groups

    return draw_figures(run_groups(build_report([root])))


def test_ensemble_size_joins_rows_that_differ_in_m_alone_beside_variants_at_one_m(tmp_path, capsys):
    """be_m2, be_m4 and be_rank2 at M = 4 (an ablation study with an M sweep): the figure was dropped, saying
    no label had runs at different M."""
    accs = {"be_m2": [0.90, 0.92], "be_m4": [0.93, 0.94], "be_rank2": [0.80, 0.81]}
    write_m_study(tmp_path, [("single", "SingleModel", 1, {}, [0.85, 0.86]), ("be_m2", "BatchEnsemble", 2, {}, accs["be_m2"]),
                             ("be_m4", "BatchEnsemble", 4, {}, accs["be_m4"]), ("be_rank2", "BatchEnsemble", 4, {"rank": 2}, accs["be_rank2"])])  # fmt: skip
    fig = report_figures_of(tmp_path)["ensemble_size"]
    (bars,) = fig.axes[0].containers  # one line: be_m2 and be_m4; be_rank2 has no partner at another M
    np.testing.assert_allclose(bars.lines[0].get_xdata(), [2, 4])
    np.testing.assert_allclose(bars.lines[0].get_ydata(), [np.mean(accs["be_m2"]), np.mean(accs["be_m4"])])
    assert legend_texts(fig) == ["BatchEnsemble"] and "no ensemble_size figure" not in capsys.readouterr().err


def test_ensemble_size_draws_a_line_per_variant_named_by_what_sets_it_apart(tmp_path):
    write_m_study(tmp_path / "two", [("be_m2", "BatchEnsemble", 2, {}, [0.90]), ("be_m4", "BatchEnsemble", 4, {}, [0.93]),
                                     ("be_rank2_m2", "BatchEnsemble", 2, {"rank": 2}, [0.7]), ("be_rank2", "BatchEnsemble", 4, {"rank": 2}, [0.8])])  # fmt: skip
    fig = report_figures_of(tmp_path / "two")["ensemble_size"]
    default_rank = inspect.signature(BatchEnsemble.__init__).parameters["rank"].default
    assert legend_texts(fig) == [f"BatchEnsemble (rank={default_rank})", "BatchEnsemble (rank=2)"]
    lines = {tuple(c.lines[0].get_ydata()) for c in fig.axes[0].containers}
    assert lines == {(0.90, 0.93), (0.7, 0.8)}


@pytest.mark.parametrize(
    "rows, says",
    [([("be_m2", "BatchEnsemble", 2, {"rank": 2}, [0.9]), ("be_m4", "BatchEnsemble", 4, {}, [0.93])],
      "no two BatchEnsemble rows differ in M alone (be_m2 (BatchEnsemble), M=2 and be_m4 (BatchEnsemble), M=4 also differ in rank)"),
     ([("be", "BatchEnsemble", 4, {}, [0.9]), ("be_rank2", "BatchEnsemble", 4, {"rank": 2}, [0.93])], "every row has M=4"),
     ([("be", "BatchEnsemble", 4, {}, [0.9]), ("de", "DeepEnsemble", 2, {}, [0.93])], "M differs only between methods (M=2, M=4)")],
)  # fmt: skip
def test_ensemble_size_says_why_it_is_not_drawn(tmp_path, capsys, rows, says):
    write_m_study(tmp_path, rows)
    assert "ensemble_size" not in report_figures_of(tmp_path)
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "no ensemble_size figure" in line]
    assert says in line and "no method label has runs with different M" not in line
