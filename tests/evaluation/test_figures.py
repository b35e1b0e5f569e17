"""Figures: PNG files under <run>/figures/ and images in the TensorBoard event file."""

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ensemble_lab.evaluation.figures import build_figures, write_figures
from ensemble_lab.evaluation.metrics import predictive_metrics

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
    return collected, {"num_members": num_members, "weight_cosine": cosine, "sets": sets}


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
