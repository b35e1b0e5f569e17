"""Figures: PNG files under <run>/figures/ and images in the TensorBoard event file."""

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ensemble_lab.figures.per_run import build_figures, write_figures
from ensemble_lab.metrics.classification import predictive_metrics, uncertainty_scores

ROLES = {"clean": "id", "noisy": "shift", "other": "ood"}


def fake_run(num_members: int, weight_cosine: bool = True) -> tuple[dict, dict]:
    """(collected, results) as the mixin builds them, from random member probabilities."""
    gen = torch.Generator().manual_seed(num_members)
    collected = {}
    for k, name in enumerate(ROLES):
        logits = torch.randn(num_members, 40, 5, generator=gen) * (3.0 - k)  # flatter for shift / ood
        collected[name] = (logits.softmax(-1), torch.randint(0, 5, (40,), generator=gen))
    sets = {name: {"role": ROLES[name], **predictive_metrics(*collected[name])} for name in ROLES}
    cosine = torch.eye(num_members).tolist() if weight_cosine else None
    return collected, {"method": "BatchEnsemble", "run_name": "be", "num_members": num_members, "weight_cosine": cosine, "sets": sets}


def test_figure_names():
    collected, results = fake_run(3)
    assert set(build_figures(collected, ROLES, results)) == {
        "reliability_clean", "reliability_noisy", "uncertainty_histograms",
        "pairwise_disagreement_clean", "weight_cosine",
    }  # fmt: skip
    # one member: nothing to compare between members; MC Dropout: no weight cosine
    collected, results = fake_run(1)
    assert set(build_figures(collected, ROLES, results)) == {"reliability_clean", "reliability_noisy", "uncertainty_histograms"}
    collected, results = fake_run(2, weight_cosine=False)
    assert "weight_cosine" not in build_figures(collected, ROLES, results)


def test_titles_name_the_run_and_diagrams_count_samples():
    collected, results = fake_run(3)
    figures = build_figures(collected, ROLES, results)
    diagram, counts, mass_diagram, mass_counts = figures["reliability_noisy"].axes
    probs, targets = collected["noisy"]
    mean = probs.mean(0)  # (N, C)
    confidence, correct = mean.max(-1).values, (mean.argmax(-1) == targets).double()
    per_bin = [((confidence > b / 15) & (confidence <= (b + 1) / 15)) | ((confidence <= 1 / 15) if b == 0 else False) for b in range(15)]
    ece = sum(float(m.double().mean() * (correct[m].mean() - confidence[m].double().mean()).abs()) for m in per_bin if m.any())
    assert diagram.get_title() == f"equal-width bins: ECE {ece:.3f}"
    assert figures["reliability_noisy"].get_suptitle() == "be (BatchEnsemble), M=3: reliability on noisy"
    # equal-mass bins: numpy's array_split of the samples sorted by confidence (no ties in random data)
    order = np.argsort(confidence.numpy(), kind="stable")
    bins = [b for b in np.array_split(order, 15) if len(b)]
    adaptive = sum(len(b) / len(order) * abs(correct.numpy()[b].mean() - confidence.double().numpy()[b].mean()) for b in bins)
    assert mass_diagram.get_title() == f"equal-mass bins: adaptive ECE {adaptive:.3f}"
    spans = sorted(p.get_width() for p in mass_counts.patches)
    assert sorted(p.get_height() * p.get_width() for p in mass_counts.patches) == pytest.approx(sorted(len(b) for b in bins))  # samples / unit × span
    assert len(spans) == len(bins)
    (line,) = [line for line in mass_diagram.lines if line.get_marker() == "o"]  # a marker per bin: (mean confidence, accuracy)
    expected = sorted((confidence.double().numpy()[b].mean(), correct.numpy()[b].mean()) for b in bins)
    np.testing.assert_allclose(sorted(zip(line.get_xdata(), line.get_ydata())), expected, atol=1e-12)
    assert sorted(p.get_height() for p in counts.patches) == sorted(int(m.sum()) for m in per_bin if m.any())
    assert (counts.get_xlabel(), counts.get_ylabel(), diagram.get_ylabel()) == ("confidence (max p̄)", "samples", "accuracy")
    assert [t.get_text() for t in diagram.get_legend().get_texts()] == ["accuracy", "gap to confidence"]
    histograms = figures["uncertainty_histograms"]
    assert histograms.get_suptitle() == "be (BatchEnsemble), M=3: uncertainty per test set"
    assert [t.get_text() for t in histograms.axes[0].get_legend().get_texts()] == ["clean (id)", "noisy (shift)", "other (ood)"]
    top = max(float(uncertainty_scores(p)["mi"].max()) for p, _ in collected.values())
    assert histograms.axes[1].get_xlim()[1] == pytest.approx(top, rel=0.06)  # the mi axis reaches the largest mi
    assert figures["weight_cosine"].axes[0].get_title() == "be (BatchEnsemble), M=3\nweight cosine, effective weights"
    # a run named after its class says it once
    _, plain = fake_run(1)
    plain["run_name"] = "BatchEnsemble"
    title = build_figures(collected, ROLES, {**plain, "num_members": 3})["reliability_clean"].get_suptitle()
    assert title == "BatchEnsemble, M=3: reliability on clean"


def test_png_files_and_tensorboard_images(tmp_path):
    collected, results = fake_run(3)
    logger = TensorBoardLogger(save_dir=tmp_path, name="tb", version=0)
    paths = write_figures(tmp_path / "run", collected, ROLES, results, loggers=[logger], step=7)
    logger.experiment.flush()
    assert sorted(p.name for p in (tmp_path / "run" / "figures").iterdir()) == sorted(p.name for p in paths)
    assert len(paths) == 5
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    assert tags == {f"test/figures/{p.stem}" for p in paths}
    assert events.Images("test/figures/weight_cosine")[0].step == 7


def test_every_palette_colour_stands_out_on_white():
    from matplotlib.colors import to_rgb

    from ensemble_lab.figures.style import PALETTE

    def luminance(colour: str) -> float:  # WCAG 2 relative luminance
        linear = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in to_rgb(colour)]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    contrast = {colour: 1.05 / (luminance(colour) + 0.05) for colour in PALETTE}
    assert min(contrast.values()) >= 2.2, contrast  # Okabe-Ito's own #F0E442 would read 1.3
    assert len(set(PALETTE)) == len(PALETTE)
