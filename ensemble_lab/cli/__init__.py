"""The command-line face: ``app`` holds the console entry point ``main`` of ``ensemble-lab`` and
``python -m ensemble_lab``, which dispatches to LightningCLI's subcommands (``ensemble_lab.config``) and to
``study``, ``report`` and ``connectivity`` (their own packages). Nothing imports this package."""

from ensemble_lab.cli.app import main

__all__ = ["main"]
