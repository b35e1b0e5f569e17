"""Shared fixtures: run the real CLI inside a temporary directory."""

import json
import signal
from pathlib import Path

import pytest

from ensemble_lab.cli import main

REPO = Path(__file__).resolve().parents[1]
#: trainer options that keep an end-to-end CLI run to a few seconds
TINY_TRAINER = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
]


def run_dirs(root: Path) -> list[Path]:
    """Run directories (lightning_logs/version_N) below ``root``, oldest first."""
    return sorted((root / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def reproducible(results: dict) -> dict:
    """``results`` without the cost keys that measure the machine (throughput, memory), which no rerun repeats."""
    from ensemble_lab.metrics.cost import MEASURED

    cost = {k: v for k, v in (results.get("cost") or {}).items() if k not in MEASURED}
    return {**results, "cost": cost} if "cost" in results else results


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Call ``main(args)`` with the working directory (and so lightning_logs/) in tmp_path."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> None:
        main(list(args))

    return run


@pytest.fixture
def sigint_enabled():
    """Python's own Ctrl-C handler for a test that sends SIGINT to this process: a shell that starts
    pytest in the background (``cmd &``) leaves SIGINT ignored, and ensemble-lab keeps it that way."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
