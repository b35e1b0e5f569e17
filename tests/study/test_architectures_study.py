"""configs/study/architectures_digits.yaml: every architecture × method × seed, each architecture one recipe."""

import yaml

from ensemble_lab.study.spec import load_study
from tests.conftest import REPO

STUDY = REPO / "configs" / "study" / "architectures_digits.yaml"
BACKBONES = {"mlp": "MLPOptions", "resnet18": "ResNet18Options", "vit": "ViTOptions"}
METHODS = {"single": "SingleModel", "deep_ensemble": "DeepEnsemble", "batch_ensemble": "BatchEnsemble",
           "low_rank": "LowRankEnsemble", "packed": "PackedEnsemble"}  # fmt: skip


def resolved(run) -> dict:
    """What a run's config files set, later files over earlier ones, then its --trainer.max_epochs override
    (read from the YAML files here, not by the CLI's parser)."""
    method = backbone = epochs = None
    for path in run.configs:
        doc = yaml.safe_load(path.read_text())
        model = doc.get("model", {})
        method = model.get("class_path", method)
        backbone = model.get("init_args", {}).get("backbone", {}).get("class_path", backbone)
        epochs = doc.get("trainer", {}).get("max_epochs", epochs)
    for arg in run.overrides:
        if arg.startswith("--trainer.max_epochs="):
            epochs = int(arg.split("=")[1])
    return {"method": method, "backbone": backbone, "epochs": epochs, "data": doc.get("data", {}).get("class_path")}


def test_every_architecture_runs_every_method_with_one_recipe(tmp_path):
    runs = load_study(STUDY, out=tmp_path)
    assert len(runs) == 45 and {run.seed for run in runs} == {42, 69, 123}
    assert {run.name for run in runs} == {f"{a}.{m}" for a in BACKBONES for m in METHODS}
    recipes: dict[str, set] = {a: set() for a in BACKBONES}
    for run in runs:
        arch, method = run.name.split(".")
        got = resolved(run)
        assert got["method"] == METHODS[method] and got["backbone"] == BACKBONES[arch], run.name  # the name says what runs
        recipes[arch].add((got["epochs"], got["data"]))
    assert all(len(r) == 1 for r in recipes.values()), recipes  # one number of epochs per architecture
