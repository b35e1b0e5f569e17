"""The command-line face: ``ensemble-lab`` (LightningCLI subcommands plus study and report).

Modules: ``app`` (the entry point ``main``), ``lightning_cli`` (the LightningCLI subclass),
``parser_errors`` (one-line messages for bad options), ``failures`` (which errors are the user's),
``resume``, ``callbacks``, ``interrupts``, ``study`` / ``study_args``, ``report``.
"""

from ensemble_lab.cli.app import main

__all__ = ["main"]
