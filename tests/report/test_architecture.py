"""A report of runs on several backbones: the architecture read from each run's config, rows grouped by it, and
significance and bold-best only within an architecture (hand-written results.json files)."""

import csv
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats

from ensemble_lab.cli import main
from ensemble_lab.report.architecture import architecture

CLASS_PATHS = {"mlp": "ensemble_lab.nn.MLPOptions", "resnet18": "ensemble_lab.nn.ResNet18Options", "vit": "ensemble_lab.nn.ViTOptions"}
METHODS = {"single": ("SingleModel", 1), "deep_ensemble": ("DeepEnsemble", 4), "batch_ensemble": ("BatchEnsemble", 4)}
SEEDS = (1, 2, 3)
#: id acc per (architecture, method) and seed: the ViT is far worse than the others, its Deep Ensemble barely
#: better than its single model (not significant against it, very significant against the MLP's)
ACC = {
    ("mlp", "single"): [0.90, 0.91, 0.92],
    ("mlp", "deep_ensemble"): [0.95, 0.96, 0.955],
    ("mlp", "batch_ensemble"): [0.905, 0.915, 0.91],
    ("resnet18", "single"): [0.93, 0.94, 0.935],
    ("resnet18", "deep_ensemble"): [0.97, 0.975, 0.98],
    ("resnet18", "batch_ensemble"): [0.945, 0.95, 0.94],
    ("vit", "single"): [0.60, 0.62, 0.61],
    ("vit", "deep_ensemble"): [0.605, 0.625, 0.615],
    ("vit", "batch_ensemble"): [0.59, 0.60, 0.61],
}


def write_run(run: Path, arch: str, method: str, seed: int, acc_table: dict = ACC, backbone: dict | None = None) -> None:
    """``backbone``: the run's recorded backbone keys (flat, below model.init_args.backbone); else ``arch``'s class."""
    run.mkdir(parents=True)
    cls, members = METHODS[method]
    acc = acc_table[(arch, method)][SEEDS.index(seed)]
    recorded = {"class_path": CLASS_PATHS[arch]} if backbone is None else backbone
    config = {"seed_everything": seed, "model.class_path": f"ensemble_lab.methods.{cls}", **{f"model.init_args.backbone.{k}": v for k, v in recorded.items()}}
    doc = {
        "method": cls, "run_name": f"{arch}.{method}", "num_members": members, "seed": seed, "datamodule": "DigitsDataModule",
        "config": config, "weight_cosine_mean": 0.5 if members > 1 else None,
        "sets": {"digits": {"role": "id", "acc": acc, "nll": 1 - acc, "ece": 0.05, "mi": 0.1, "disagreement": 0.05}},
    }  # fmt: skip
    (run / "results.json").write_text(json.dumps(doc))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    for arch, method in ACC:  # written in another order than the report's
        for seed in SEEDS:
            write_run(root / f"{arch}.{method}" / f"seed_{seed}", arch, method, seed)
    return root


def test_architecture_from_the_recorded_backbone():
    flat = {"model.init_args.backbone.class_path": "ensemble_lab.nn.ResNet18Options", "model.init_args.backbone.init_args.width": 4}
    assert architecture({"config": flat}) == "resnet18"
    assert architecture({"config": {"model.init_args.backbone.class_path": "ensemble_lab.nn.vit.ViTOptions"}}) == "vit"
    # a record of before options belonged to their backbone: the name and flat options
    assert architecture({"config": {"model.init_args.backbone": "mlp", "model.init_args.hidden_sizes": [8]}}) == "mlp"
    assert architecture({"config": {"model.init_args.backbone": "timm/vit_tiny_patch16_224"}}) == "timm/vit_tiny_patch16_224"
    assert architecture({"config": {"model.init_args.backbone.class_path": "mypackage.MyNetOptions"}}) == "MyNetOptions"
    # a timm backbone in its long spelling: the model it built, as the short spelling names it
    timm_vit = {"model.init_args.backbone.class_path": "ensemble_lab.nn.TimmOptions", "model.init_args.backbone.init_args.model_name": "vit_tiny_patch16_224"}
    assert architecture({"config": timm_vit}) == "timm/vit_tiny_patch16_224"
    assert architecture({"config": {**timm_vit, "model.init_args.backbone.init_args.model_name": "timm/resnet18"}}) == "timm/resnet18"
    assert architecture({"config": {"model.init_args.backbone.class_path": "TimmOptions"}}) == "timm/resnet18"  # the option's default
    assert architecture({"config": {}}) is None and architecture({}) is None


def test_rows_grouped_by_architecture_and_compared_within_it(study, capsys, tmp_path):
    main(["report", str(study), "--preset", "diversity", "--out", str(tmp_path / "out")])
    markdown = capsys.readouterr().out
    header = next(line for line in markdown.splitlines() if line.startswith("| architecture"))
    assert header.split(" | ")[:3] == ["| architecture", "method", "run"]
    rows = [line.split(" | ") for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| architecture")]
    # by architecture (the backbone registry's order), then the paper's method order
    order = [(r[0].removeprefix("| "), r[1]) for r in rows]
    expected = [(a, cls) for a in ("mlp", "resnet18", "vit") for cls in ("SingleModel", "DeepEnsemble", "BatchEnsemble")]
    assert order == expected
    assert "options that differ" not in markdown  # a method's rows of different backbones are not listed as differing
    with open(tmp_path / "out" / "report.csv") as f:
        cells = [r for r in csv.DictReader(f) if r["metric"] == "acc"]
    assert len(cells) == len(ACC)
    for cell in cells:
        arch, method = cell["label"].split(".")
        assert cell["architecture"] == arch
        if method == "single":
            assert cell["baseline"] == "" and cell["test"] == ""  # each architecture's single model is its own baseline
            continue
        assert cell["baseline"] == f"{arch}.single (SingleModel)"
        p = stats.ttest_ind(ACC[(arch, method)], ACC[(arch, "single")], equal_var=False).pvalue  # against its own architecture's
        assert float(cell["p"]) == pytest.approx(p, rel=1e-6)
    vit_de = next(c for c in cells if c["label"] == "vit.deep_ensemble")
    assert vit_de["significant"] == "False"  # against the MLP's single model it would be: p below
    assert stats.ttest_ind(ACC[("vit", "deep_ensemble")], ACC[("mlp", "single")], equal_var=False).pvalue < 1e-4


def test_bold_best_within_each_architecture(study, capsys):
    main(["report", str(study), "--preset", "diversity", "--format", "latex"])
    text = capsys.readouterr().out
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    header = text.split(r"\toprule")[1].split(r"\midrule")[0].strip().removesuffix(r"\\").split(" & ")
    acc_index = next(k for k, h in enumerate(header) if h.strip().startswith("acc "))
    assert [h.strip() for h in header[:3]] == ["architecture", "method", "run"]
    bold = {}
    for line in body:
        cells = [c.strip() for c in line.removesuffix(r"\\").split(" & ")]
        bold[cells[2].replace(r"\_", "_").split(" ")[0]] = r"\mathbf" in cells[acc_index]
    for arch in CLASS_PATHS:
        means = {m: round(statistics.fmean(ACC[(arch, m)]), 3) for m in METHODS}
        best = max(means.values())
        for method, mean in means.items():
            assert bold[f"{arch}.{method}"] == (mean == best), (arch, method)


def test_one_architecture_reads_as_before(study, capsys):
    main(["report", str(study / "mlp.single"), str(study / "mlp.deep_ensemble"), "--preset", "diversity"])
    markdown = capsys.readouterr().out
    assert "architecture" not in markdown and "| run | M | data | n |" in markdown
    assert "† differs from mlp.single (SingleModel)" in markdown  # DE against the single model, as always


#: id acc of two timm models and an MLP: each timm model's Deep Ensemble far better than its own single model
TIMM_ACC = {
    ("timm_resnet", "single"): [0.80, 0.81, 0.82],
    ("timm_resnet", "deep_ensemble"): [0.90, 0.91, 0.905],
    ("timm_vit", "single"): [0.60, 0.61, 0.62],
    ("timm_vit", "deep_ensemble"): [0.70, 0.71, 0.72],
    ("mlp", "single"): [0.85, 0.86, 0.87],
}
TIMM_BACKBONES = {
    "timm_resnet": {"class_path": "ensemble_lab.nn.TimmOptions", "init_args.model_name": "resnet18", "init_args.pretrained": True},
    "timm_vit": {"class_path": "ensemble_lab.nn.TimmOptions", "init_args.model_name": "vit_tiny_patch16_224", "init_args.pretrained": True},
    "mlp": None,
}
#: what each group of runs must read as
TIMM_NAMES = {"timm_resnet": "timm/resnet18", "timm_vit": "timm/vit_tiny_patch16_224", "mlp": "mlp"}


def test_two_timm_models_are_two_architectures(tmp_path, capsys):
    root = tmp_path / "study"
    for arch, method in TIMM_ACC:
        for seed in SEEDS:
            write_run(root / f"{arch}.{method}" / f"seed_{seed}", arch, method, seed, TIMM_ACC, TIMM_BACKBONES[arch])
    main(["report", str(root), "--preset", "diversity", "--out", str(tmp_path / "out")])
    markdown = capsys.readouterr().out
    rows = [line.split(" | ") for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| architecture")]
    shown = {(r[0].removeprefix("| "), r[2].split(" ")[0]) for r in rows}
    assert shown == {(TIMM_NAMES[arch], f"{arch}.{method}") for arch, method in TIMM_ACC}
    assert "| timm |" not in markdown
    with open(tmp_path / "out" / "report.csv") as f:
        cells = [r for r in csv.DictReader(f) if r["metric"] == "acc"]
    assert len(cells) == len(TIMM_ACC)
    for cell in cells:
        arch, method = cell["label"].split(".")
        assert cell["architecture"] == TIMM_NAMES[arch]
        if method == "deep_ensemble":  # each timm model's ensemble against its own single model, not the other's
            assert cell["baseline"] == f"{arch}.single (SingleModel)"
            p = stats.ttest_ind(TIMM_ACC[(arch, method)], TIMM_ACC[(arch, "single")], equal_var=False).pvalue
            assert float(cell["p"]) == pytest.approx(p, rel=1e-6)
