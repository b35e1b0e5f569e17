"""The benchmark suite runs end to end (micro sizes, seconds). Timings are printed, never asserted."""

import json

from benchmarks.epochs import CONFIGS, METHODS
from benchmarks.run import main


def test_micro_suite_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    figures = main(["--micro", "--out", str(out)])
    document = json.loads(out.read_text())
    names = [f["name"] for f in document["figures"]]
    assert len(names) == len(figures) and {name[:3] for name in names} == {f"({c})" for c in "abcdefghijklm"}
    for figure in document["figures"]:
        assert figure["pairs"] >= 1 and figure["ratio_median"] > 0
        assert figure["ratio_q25"] <= figure["ratio_median"] <= figure["ratio_q75"]
    table = capsys.readouterr().out
    assert "(e) training epoch" in table and "target" in table
    epochs = [f for f in document["figures"] if f["name"].startswith("(j)")]
    assert [f["name"].removeprefix("(j) training epoch, ") for f in epochs] == list(METHODS)  # every shipped CIFAR method
    assert all("images/s, step peak tensors" in f["note"] and "allocated" not in f["note"] for f in epochs)  # no CUDA peak off CUDA


def test_micro_suite_with_gpu_options_on_cpu(tmp_path):
    figures = main(["--micro", "--only", "abd", "--precision", "bf16-mixed", "--channels-last", "--out", str(tmp_path / "b.json")])
    assert len(figures) == 7


def test_training_epochs_cover_every_shipped_cifar10_method():
    # *_peer.yaml are the same methods under the peer library's settings (docs/paper.md), not methods of their own
    methods = {path.stem for path in CONFIGS.glob("*.yaml") if not path.stem.endswith("_peer")}
    assert set(METHODS) == methods and len(methods) == 8


def test_test_time_figure_reports_memory_on_every_device(tmp_path):
    figures = main(["--micro", "--only", "i", "--out", str(tmp_path / "b.json")])
    note = next(f.note for f in figures if f.name.startswith("(i) test forward"))
    assert "parameters" in note and "peak tensors B=1" in note and "CUDA" not in note
