"""What every backbone's options object is: the backbone's own ``--model.backbone.<option>`` values.

Each backbone defines a subclass beside its builder (``MLPOptions`` in ``mlp``, ``ResNet18Options`` in
``resnet``, ``WideResNetOptions`` in ``wide_resnet``); its ``__init__`` arguments are the backbone's
options, with their defaults and help, so an option of another backbone is refused by the parser.
A new backbone (a ViT, a timm model) adds a subclass with its own options and a short ``name``.
"""

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from torch import nn

#: resize(width, multiple) -> the new width, a multiple of ``multiple``
Resize = Callable[[int, int], int]


def plain(value: Any) -> Any:
    """A config value as YAML and JSON hold it: tuples become lists (recursively)."""
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


class BackboneOptions:
    """A backbone and its options: ``--model.backbone <name or class>`` with ``--model.backbone.<option>``.

    A subclass sets ``name`` (the short name, e.g. "mlp") and takes its options as ``__init__`` arguments,
    stored as attributes of the same names; it says how to build the network, how to resize its widths and
    what its depth and width are.
    """

    #: the short name (``--model.backbone mlp``), also what results.json and the report call the backbone
    name: ClassVar[str] = ""

    @classmethod
    def options_class(cls) -> type["BackboneOptions"]:
        """The backbone's own options class: the first that sets ``name`` (a default given as jsonargparse's
        ``lazy_instance`` is an instance of a subclass of it)."""
        return next(c for c in cls.__mro__ if "name" in vars(c))

    def options(self) -> dict[str, Any]:
        """The options as plain values, in the order of ``__init__`` (what a checkpoint records)."""
        return {name: plain(getattr(self, name)) for name in options_of(self.options_class())}

    @classmethod
    def class_path(cls) -> str:
        """The class path a config records: ``ensemble_lab.nn.<Name>`` for ensemble-lab's backbones (the package
        exports each, and jsonargparse writes that shortest path), else the defining module's."""
        own = cls.options_class()
        package = "ensemble_lab.nn"
        return f"{package}.{own.__qualname__}" if own.__module__.startswith(package + ".") else f"{own.__module__}.{own.__qualname__}"

    def record(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}``, as config.yaml and a checkpoint's hyper-parameters hold it."""
        return {"class_path": self.class_path(), "init_args": self.options()}

    def build(self, layers: Any, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0, **derived: Any) -> nn.Module:
        """The network on member-major rows from the method's layer factory ``layers``; ``derived``: sizes only a
        resize sets (see ``resized``)."""
        raise NotImplementedError

    def resized(self, resize: Resize, groups: int) -> dict[str, Any]:
        """The options with every width w replaced by resize(w, multiple) such that every layer's channel counts
        divide by ``groups`` (plus any derived size the builder takes); a ConfigError where none can."""
        raise NotImplementedError

    def dimensions(self) -> dict[str, int]:
        """{"depth": ..., "width": ...}: the sizes a sweep varies, those the backbone has."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackboneOptions) and other.options_class() is self.options_class() and self.options() == other.options()

    def __hash__(self) -> int:
        return hash((self.options_class().__name__, repr(self.options())))

    def __repr__(self) -> str:
        return f"{self.options_class().__name__}({', '.join(f'{k}={v!r}' for k, v in self.options().items())})"


def options_of(cls: type[BackboneOptions]) -> Mapping[str, Any]:
    """{option: default} of a BackboneOptions class, from its ``__init__``."""
    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
