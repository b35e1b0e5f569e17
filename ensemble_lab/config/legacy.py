"""The command line's side of old option names: old flags are rewritten before parsing (with a one-line
deprecation note each) and config files are read through a YAML loader that translates their model's old
keys. The table and the translation itself: ``ensemble_lab.runs.legacy_keys``."""

import sys
from collections.abc import Sequence
from typing import Any

import yaml
from jsonargparse import get_loader, set_loader

from ensemble_lab.runs.legacy_keys import translate_argv, translate_config

#: the jsonargparse parser mode whose loader is YAML's with old model keys translated
PARSER_MODE = "ensemble_lab_yaml"
_yaml_loader = get_loader("yaml")


def _load(text: str) -> Any:
    """YAML as jsonargparse reads it; a config (a mapping with ``model``) gets its old model keys translated."""
    return translate_config(_yaml_loader(text))


set_loader(PARSER_MODE, _load, exceptions=(yaml.YAMLError,))


def upgrade_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with old model flags in their new spelling; prints one note per old flag to stderr."""
    upgraded, notes = translate_argv(argv)
    for note in dict.fromkeys(notes):
        print(f"ensemble-lab: {note}", file=sys.stderr)
    return upgraded
