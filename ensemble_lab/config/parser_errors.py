"""One-line messages for command-line mistakes.

jsonargparse reports a bad option as the whole usage text (a hundred lines) followed by a nested
error tree. The parser below turns that into a single ConfigError that names the option, says
what was wrong and, for a misspelt key, which key was probably meant; ``main()`` prints it as
``ensemble-lab: error: ...``.
"""

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningArgumentParser

from ensemble_lab.compat import parser_actions
from ensemble_lab.config.legacy import PARSER_MODE
from ensemble_lab.data.base import EnsembleDataModule
from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.base import EnsembleModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class EnsembleLabArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are a ConfigError with a one-line message, reading config files
    with old model keys translated (``legacy.PARSER_MODE``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """LightningArgumentParser's arguments; ``parser_mode`` defaults to ``legacy.PARSER_MODE``."""
        kwargs.setdefault("parser_mode", PARSER_MODE)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # jsonargparse parses nested classes with throw-away parsers (exit_on_error=False) and
        # relies on their ArgumentError to try the next alternative: leave those alone.
        if not self.exit_on_error:
            super().error(message, ex)
        raise ConfigError(summarize_parser_error(message, self)) from ex


@dataclass
class ParserError:
    """A jsonargparse message and what is read from it once."""

    message: str
    parser: LightningArgumentParser | None

    @property
    def keys(self) -> list[str]:
        """The nested option path, e.g. ["model", "optimizer"]."""
        return re.findall(r'Parser key "([^"]+)"', self.message)

    @property
    def class_paths(self) -> list[str]:
        """Classes named in the message, outermost first."""
        return re.findall(r"class_path[ =]'([^']+)'", self.message)

    @property
    def help_hint(self) -> str:
        words = (self.parser.prog if self.parser is not None else "").replace(" [options]", "").split()
        named = re.search(r"Subcommand '(\w+)'", self.message)
        sub = words[-1] if words and words[-1] in SUBCOMMANDS else named.group(1) if named else None
        return f"`ensemble-lab {sub + ' ' if sub else ''}--help` lists every option"


def _missing_required(e: ParserError) -> str | None:
    """"--model.lr_scheduler MultiStepLR needs milestones ..." for a nested class given without a required argument
    (jsonargparse would report the whole enclosing Namespace as an invalid value)."""
    found = re.search(r"the following arguments are required: ([\w, ]+)", e.message)
    if not found or not e.keys:
        return None
    names = [n.strip() for n in found.group(1).split(",")]
    given = re.search(rf"Given value: Namespace\(class_path='([\w.]+)', init_args=Namespace\([^()]*\b{names[0]}=None", e.message)
    option = "--" + ".".join(e.keys)
    needs = f"{given.group(1).rsplit('.', 1)[-1]} needs" if given else "needs"
    return f"{option} {needs} {', '.join(names)}: add {' '.join(f'{option}.{n} VALUE' for n in names)}"


def _unknown_init_argument(e: ParserError) -> str | None:
    unknown = re.search(r"Option '([^']+)' is not accepted(?! before)", e.message)
    if not unknown or not e.class_paths:
        return None
    option, class_path = unknown.group(1), e.class_paths[-1]
    accepted, name = init_parameters(class_path), class_path.rsplit(".", 1)[-1]
    return (
        f"unknown option '{'.'.join([*e.keys, option])}': {name} has no argument '{option}'"
        f"{_did_you_mean(option, accepted)}; {name} accepts: {', '.join(accepted)}"
    )


def _unknown_key(e: ParserError) -> str | None:
    found = re.search(r"(?:does not accept option|^Option) '([^']+)'", e.message)
    if not found:
        return None
    return f"unknown option '{found.group(1)}'{_did_you_mean(found.group(1), option_names(e.parser))}; {e.help_hint}"


def _unrecognized(e: ParserError) -> str | None:
    found = re.match(r"unrecognized arguments: (.*)", e.message)
    if not found:
        return None
    names = option_names(e.parser)
    options = [a.lstrip("-").split("=")[0] for a in found.group(1).split() if a.startswith("--")]
    close = [f"--{c}" for o in options if (c := _closest(o, names))]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unrecognized arguments: {found.group(1)}{hint}; {e.help_hint}"


def _unknown_class(e: ParserError) -> str | None:
    found = re.search(r"Expected a dot import path string: (\S+)", e.message)
    if not found or not e.keys:
        return None
    name, choices = found.group(1), subclass_names(e.keys[0]) if len(e.keys) == 1 else []
    allowed = f"; choose from {', '.join(choices)}" if choices else "; give a class name or a full import path"
    return f"unknown class '{name}' for --{'.'.join(e.keys)}{_did_you_mean(name, choices)}{allowed}"


def _unknown_help_class(e: ParserError) -> str | None:
    found = re.search(r"\b(model|data)\.help: Expected a dot import path string: (\S+)", e.message)
    if not found:
        return None
    group, name = found.groups()
    choices = subclass_names(group)
    return f"unknown class '{name}' for --{group}.help{_did_you_mean(name, choices)}; choose from {', '.join(choices)}"


def _bad_value(e: ParserError) -> str | None:
    if not e.keys:
        return None
    found = re.search(r"Expected an? (?:<class '([\w.]+)'>|(\S+))\. Got value: (.*)", e.message)
    if found:  # a value inside a class's arguments
        expected = (found.group(1) or found.group(2)).split(".")[-1]
        return f"invalid value '{found.group(3).strip()}' for --{'.'.join(e.keys)}: expected {expected}"
    union = re.search(r"Errors:\n(.*?)\n\s*Given value type:.*\n\s*Given value: (.*)", e.message, re.S)
    if union:  # e.g. Optional[int]: every alternative failed
        types = re.findall(r"Expected an? <class '([\w.]+)'>", union.group(1))
        wanted = " or ".join(t.split(".")[-1].replace("NoneType", "null") for t in types) or "another value"
        return f"invalid value '{union.group(2).strip()}' for --{e.keys[0]}: expected {wanted}"
    return None


def _missing_config_file(e: ParserError) -> str | None:
    found = re.search(r"File does not exist: '(.+)'", e.message)
    return f"config file not found: {found.group(1)}" if found and e.keys == ["config"] else None


def _no_model(e: ParserError) -> str | None:
    if not re.search(r"the following arguments are required: \S*\bmodel\b", e.message):
        return None
    return "no --model given: name a method (--model BatchEnsemble) or pass a run's saved config (--config <run>/config.yaml)"


def _no_data(e: ParserError) -> str | None:
    if not re.search(r"the following arguments are required: \S*\bdata\b", e.message):
        return None
    return (
        "no --data given: name a datamodule (--data DigitsDataModule, MNISTDataModule, CIFAR10DataModule or CIFAR100DataModule) "
        "or pass a config that has one (--config configs/digits/<method>.yaml)"
    )


RULES: tuple[Callable[[ParserError], str | None], ...] = (
    _missing_required, _unknown_init_argument, _unknown_key, _unrecognized, _unknown_help_class, _unknown_class, _bad_value,
    _missing_config_file, _no_model, _no_data,
)


def summarize_parser_error(message: str, parser: LightningArgumentParser | None = None) -> str:
    """The gist of a jsonargparse error message, on one line."""
    error = ParserError(message, parser)
    for rule in RULES:
        if (line := rule(error)) is not None:
            return line
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    return "; ".join(lines) + f" ({error.help_hint})"


def _closest(word: str, candidates: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return close[0] if close else None


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = _closest(word, candidates)
    return f" (did you mean '{close}'?)" if close else ""


def option_names(parser: LightningArgumentParser | None) -> list[str]:
    """Every option key a parser (and its subcommand parsers) accepts, e.g. ``trainer.max_epochs``."""
    if parser is None:
        return []
    names: list[str] = []
    for action in parser_actions(parser):
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and all(isinstance(p, LightningArgumentParser) for p in choices.values()):
            for sub in choices.values():  # the subcommands' own parsers
                names += option_names(sub)
        elif action.dest and not isinstance(action, ActionConfigFile):
            names.append(action.dest)
    return sorted(set(names))


def init_parameters(class_path: str) -> list[str]:
    """Names of the arguments a class's ``__init__`` takes, following ``**kwargs`` to its bases."""
    try:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
    except (ValueError, ImportError, AttributeError):
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]  # drop self
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def subclass_names(group: str) -> list[str]:
    """Short names selectable for ``--model`` or ``--data`` (ensemble-lab's concrete subclasses of the base)."""
    base = {"model": EnsembleModule, "data": EnsembleDataModule}.get(group)
    found: list[str] = []
    todo: list[type] = list(base.__subclasses__()) if base else []
    while todo:
        cls = todo.pop(0)
        todo += cls.__subclasses__()
        if cls.__module__.startswith("ensemble_lab.") and not inspect.isabstract(cls) and cls.__name__ not in found:
            found.append(cls.__name__)
    return found
