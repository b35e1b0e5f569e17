"""The "timm" backbone: any model of the timm library, made into the method's ensemble by its layers.

``TimmOptions`` names the model and the keywords timm's ``create_model`` takes for it; the number of
classes and input channels come from the data (linked by the CLI), ``--model.dropout`` is timm's
``drop_rate``. The method's layer factory says how the built model becomes its ensemble
(``LayerFactory.conversion``): module surgery (``timm_surgery``: BatchEnsemble, LowRank, MC Dropout,
the single model), M stacked copies in one vectorised call (``stacked``: DeepEnsemble), or not at all.
timm is an optional dependency, imported only when such a model is built.
"""

import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType
from typing import Any

from torch import nn

from ensemble_lab.errors import ConfigError
from ensemble_lab.nn.backbone_options import BackboneOptions
from ensemble_lab.nn.factories import LayerFactory
from ensemble_lab.nn.stacked import StackedMembers
from ensemble_lab.nn.timm_surgery import convert_layers

#: the methods whose layer factory converts a model built elsewhere (the error for the others names them)
TAKES_TIMM = "SingleModel, BatchEnsemble, LowRankEnsemble, DeepEnsemble and MCDropout"
#: the prefix of the short spelling ``--model.backbone timm/<model name>``
PREFIX = "timm/"
#: keywords the data or the model's own options set: a model_args entry may not give them
LINKED = {"num_classes": "the data (num_classes)", "in_chans": "the data (input_shape)", "pretrained": "--model.backbone.pretrained"}
#: true while a model is built only to have a checkpoint's weights loaded into it (see weights_from_checkpoint)
_FROM_CHECKPOINT: ContextVar[bool] = ContextVar("ensemble_lab_weights_from_checkpoint", default=False)


@contextmanager
def weights_from_checkpoint(active: bool = True) -> Iterator[None]:
    """Within it (when ``active``), a timm backbone is built without timm's pretrained weights, whatever
    ``pretrained`` says: the checkpoint loaded next replaces every weight, so fetching them would be a wasted
    download (or an error on a machine without network access). The options keep ``pretrained`` as recorded."""
    token = _FROM_CHECKPOINT.set(active or _FROM_CHECKPOINT.get())
    try:
        yield
    finally:
        _FROM_CHECKPOINT.reset(token)


def import_timm() -> ModuleType:
    """The timm module, or a one-line ConfigError saying how to install it."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConfigError('the timm backbone needs the timm package: pip install -e ".[timm]"') from None


def unfused(model: nn.Module) -> nn.Module:
    """``model`` with timm's fused attention switched off (``fused_attn``): its matmul-softmax form, which
    ``torch.func.vmap`` batches; torch has no batching rule for the fused CPU kernel and would loop over members."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            setattr(module, "fused_attn", False)
    return model


class TimmOptions(BackboneOptions):
    """The "timm" backbone: ``timm.create_model(model_name, **model_args)``, converted for the method.

    ``--model.backbone timm/<model name>`` is the short spelling (no model_args); with keywords:
    ``--model.backbone TimmOptions --model.backbone.model_name vit_tiny_patch16_224
    --model.backbone.model_args '{img_size: 32, patch_size: 4}'``.
    """

    name = "timm"

    def __init__(self, model_name: str = "resnet18", model_args: dict[str, Any] | None = None, pretrained: bool = False) -> None:
        """
        Args:
            model_name: a model timm knows (``timm.list_models()``), e.g. resnet18, vit_tiny_patch16_224.
            model_args: keywords for timm's create_model and the model, e.g. ``{img_size: 8, patch_size: 2,
                depth: 2, embed_dim: 32}``; num_classes and in_chans come from the data.
            pretrained: load timm's pretrained weights (downloads them: needs network access); the classifier
                is then timm's new one for the data's classes.
        """
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError(f"--model.backbone.model_name must name a timm model, got {model_name!r}")
        given = dict(model_args or {})
        for key, source in LINKED.items():
            if key in given:
                raise ConfigError(f"--model.backbone.model_args {key} is set by {source}; drop it from model_args")
        if not isinstance(pretrained, bool):
            raise ConfigError(f"--model.backbone.pretrained must be true or false, got {pretrained!r}")
        self.model_name, self.model_args, self.pretrained = model_name.removeprefix(PREFIX), given, pretrained

    def create(self, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> nn.Module:
        """timm's model for images of ``input_shape`` (C, H, W) and ``num_classes`` outputs; ``dropout``: drop_rate."""
        timm = import_timm()
        extra: dict[str, Any] = {"drop_rate": dropout} if dropout > 0 else {}
        try:
            return timm.create_model(
                self.model_name, pretrained=self.pretrained and not _FROM_CHECKPOINT.get(), num_classes=num_classes, in_chans=input_shape[0], **extra, **self.model_args
            )
        except (RuntimeError, TypeError, ValueError, AssertionError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"timm cannot build {self.model_name!r} with model_args {self.model_args}: {first}") from None

    def build(self, layers: LayerFactory, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0, **derived: Any) -> nn.Module:
        if layers.conversion == "stacked":
            return StackedMembers(lambda: unfused(self.create(input_shape, num_classes, dropout)), layers.num_members)
        if layers.conversion != "layers":
            raise ConfigError(f"--model.backbone timm/{self.model_name}: a timm model is ensembled by {TAKES_TIMM}; pick one of them")
        model = self.create(input_shape, num_classes, dropout)
        ask = getattr(model, "get_classifier", None)
        classifier = ask() if callable(ask) else None
        converted = convert_layers(model, layers, classifier if isinstance(classifier, nn.Linear) else None)
        if layers.dropout is not nn.Dropout:  # MC Dropout: timm's fused attention drops only in training; its matmul form calls attn_drop
            unfused(converted)
        if dropout > 0 and layers.dropout is not nn.Dropout and not any(type(m) is layers.dropout for m in converted.modules()):
            raise ConfigError(
                f"timm's {self.model_name} applies its dropout as a function (no dropout layer), which MC Dropout cannot keep on "
                "at test time; pick a model with dropout layers (a ViT) or another method"
            )
        return converted

    def resized(self, resize: Callable[[int, int], int], groups: int) -> dict[str, Any]:
        raise ConfigError(f"--model.backbone timm/{self.model_name} cannot change its widths; a timm model is ensembled by {TAKES_TIMM}")

    def dimensions(self) -> dict[str, int]:
        return {}  # timm's models name their sizes each their own way: no depth or width a sweep reads


def timm_from(value: str) -> TimmOptions | None:
    """The options of the short spelling ``timm/<model name>``; None for any other string."""
    return TimmOptions(model_name=value.removeprefix(PREFIX)) if value.startswith(PREFIX) else None
