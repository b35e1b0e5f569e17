"""What a method's checkpoint carries besides the weights, and the check made before loading one.

* identity (method, num_members, num_classes): a checkpoint given to a different model fails with
  one message naming both sides, before Lightning's wall of missing / mismatched tensor names;
* the random number generators (torch CPU and CUDA, numpy, python): a resumed ``fit`` continues
  with the very draws (dropout masks, augmentation) the uninterrupted run would have made.

Everything is stored as tensors and plain Python values, so ``torch.load(weights_only=True)`` reads it.
"""

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from ensemble_lab.compat import attached_trainer
from ensemble_lab.errors import CheckpointMismatchError, ConfigError
from ensemble_lab.nn import backbone_from, weights_from_checkpoint
from ensemble_lab.runs.checkpoint_files import load_checkpoint
from ensemble_lab.runs.legacy_keys import BACKBONE_KEYS, predated_options, translate_model_args

KEY = "ensemble_lab"

if TYPE_CHECKING:
    # the mixin's hooks call the LightningModule's (super()) and use its attributes
    _Base = L.LightningModule
else:
    _Base = object


def rng_states() -> dict[str, Any]:
    """The global generators' states, in types ``weights_only`` loading accepts."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple), "the global numpy generator is a legacy MT19937 RandomState"
    name, keys, pos, has_gauss, cached = state
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA only when this process has as many GPUs)."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(hyper_parameters, state_dict) of a Lightning checkpoint; CheckpointMismatchError if unusable."""
    checkpoint = load_checkpoint(path, "member checkpoint")
    return dict(checkpoint.get("hyper_parameters") or {}), checkpoint["state_dict"]


def architecture(hparams: dict[str, Any]) -> dict[str, Any]:
    """The options that fix a network's tensors, as comparable plain values: the backbone (its options object's
    ``{"class_path", "init_args"}``, defaults filled in), num_classes and input_shape. The one reading of a
    checkpoint's hyper-parameters as a network (old flat keys translated)."""
    hparams, _ = translate_model_args({"backbone": "mlp", **hparams}, hparams.get("_class_path"))  # mlp: the old default
    return {
        "backbone": backbone_from(hparams.get("backbone") or "mlp").record(),
        "num_classes": int(hparams.get("num_classes", 10)),
        "input_shape": [int(v) for v in hparams.get("input_shape", (1, 8, 8))],
    }


def flat_architecture(arch: dict[str, Any]) -> dict[str, Any]:
    """:func:`architecture` as the keys messages name: backbone (its short name), backbone.<option>, the rest as they are."""
    backbone = backbone_from(arch["backbone"])
    rest = {k: v for k, v in arch.items() if k != "backbone"}
    return {"backbone": backbone.name, **{f"backbone.{k}": v for k, v in backbone.options().items()}, **rest}


def _architecture(hparams: dict[str, Any]) -> dict[str, Any]:
    """The architecture of ``hparams`` as flat comparable keys (backbone, backbone.<option>, input_shape), those recorded."""
    recorded = "backbone" in hparams or any(key in hparams for key in BACKBONE_KEYS)
    arch: dict[str, Any] = {}
    if recorded:
        try:
            backbone = backbone_from(architecture(hparams)["backbone"])
        except (ConfigError, TypeError):  # not a backbone ensemble-lab knows: nothing to compare
            return {}
        arch = {"backbone": backbone.name, **{f"backbone.{k}": v for k, v in backbone.options().items()}}
    if "input_shape" in hparams:
        arch["input_shape"] = [int(v) for v in hparams["input_shape"]]
    return arch


def architecture_differences(theirs: dict[str, Any], mine: dict[str, Any]) -> tuple[str, str]:
    """(', key=value' of the checkpoint, the same of this model) for the architecture keys that differ."""
    theirs, mine = _architecture(theirs), _architecture(mine)
    keys = [k for k in theirs if k in mine and theirs[k] != mine[k]]
    return "".join(f", {k}={theirs[k]}" for k in keys), "".join(f", {k}={mine[k]}" for k in keys)


def identity_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Method, num_members and num_classes a checkpoint was trained with (None where unknown)."""
    saved = checkpoint.get(KEY) or {}
    hparams = checkpoint.get("hyper_parameters") or {}
    class_path = hparams.get("_class_path")  # written by LightningCLI into older checkpoints
    return {
        "method": saved.get("method") or (class_path.rsplit(".", 1)[-1] if class_path else None),
        "num_members": saved.get("num_members", hparams.get("num_members")),
        "num_classes": saved.get("num_classes", hparams.get("num_classes")),
    }


def describe(identity: dict[str, Any]) -> str:
    """'BatchEnsemble with num_members=4, num_classes=10'."""
    return f"{identity['method'] or 'an unknown method'} with num_members={identity['num_members']}, num_classes={identity['num_classes']}"


def tensor_mismatch(own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str | None:
    """The first difference between two state dicts' names and shapes, in words; None if they agree."""
    missing, unexpected = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
    if missing:
        return f"{len(missing)} tensors missing from the checkpoint, e.g. {missing[0]}"
    if unexpected:
        return f"{len(unexpected)} tensors in the checkpoint that this model lacks, e.g. {unexpected[0]}"
    for name, tensor in own.items():
        if tuple(theirs[name].shape) != tuple(tensor.shape):
            return f"{name} is {tuple(theirs[name].shape)} in the checkpoint, {tuple(tensor.shape)} here"
    return None


class CheckpointStateMixin(_Base):
    """Mix into an EnsembleModule: identity and RNG states in every checkpoint, checked on load."""

    num_members: int  # set by EnsembleModule

    def checkpoint_identity(self) -> dict[str, Any]:
        """This model's method, num_members and num_classes."""
        return {"method": type(self).__name__, "num_members": int(self.num_members), "num_classes": int(self.hparams["num_classes"])}

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, hparams_file: str | Path | None = None,
        strict: bool | None = None, **kwargs: Any,
    ) -> Any:  # fmt: skip
        """LightningModule.load_from_checkpoint, reading the hyper-parameters of an earlier release as the CLI reads
        its config.yaml: old flat options in today's places, and an option the record predates at the value its
        run was trained with (Masksembles' ``mask_placement``, ...; see ``runs.legacy_keys.predated_options``).
        Options given as ``kwargs`` win, as in Lightning's. A timm backbone is built without downloading its
        pretrained weights (the checkpoint's replace them)."""
        recorded = dict(load_checkpoint(checkpoint_path).get("hyper_parameters") or {})  # tensors memory-mapped, not read
        method = str(recorded.get("_class_path") or cls.__name__)
        translated, found = translate_model_args(recorded, method)
        # an old flat record: its option objects given in their new form (the flat keys still in the record reach
        # EnsembleModule as legacy options and translate to the same objects)
        upgraded = {k: v for k, v in translated.items() if k in ("backbone", "distillation", "repulsion")} if found else {}
        options = {**upgraded, **predated_options(recorded, method), **kwargs}
        with weights_from_checkpoint():  # the checkpoint holds every weight: a timm backbone fetches no pretrained ones
            return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, **options)

    #: the generators' states when validation began; restored when it ends (see on_validation_start)
    _rng_outside_validation: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # an epoch-end checkpoint is written during validation: store the state training continues with
        rng = self._rng_outside_validation or rng_states()
        checkpoint[KEY] = {**self.checkpoint_identity(), "rng": rng}

    def on_validation_start(self) -> None:
        super().on_validation_start()
        # Validation draws random numbers (MC Dropout's masks) but must not move the training stream:
        # a run resumed from a checkpoint written just before a validation skips that validation.
        self._rng_outside_validation = rng_states()

    def on_validation_end(self) -> None:
        super().on_validation_end()
        if self._rng_outside_validation is not None:
            set_rng_states(self._rng_outside_validation)
            self._rng_outside_validation = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        trainer = attached_trainer(self)  # None under LightningModule.load_from_checkpoint
        self.check_checkpoint(checkpoint, getattr(trainer, "ckpt_path", None))
        rng = (checkpoint.get(KEY) or {}).get("rng")
        # only a resumed fit continues the random stream; test / validate keep their own seed
        if rng is not None and trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            set_rng_states(rng)

    def check_checkpoint(self, checkpoint: dict[str, Any], path: str | None = None) -> None:
        """CheckpointMismatchError unless ``checkpoint`` was trained as this model (method and tensors)."""
        theirs, mine = identity_of(checkpoint), self.checkpoint_identity()
        other_method = theirs["method"] is not None and theirs["method"] != mine["method"]
        # MC Dropout's num_members is a test-time sample count: the tensors decide, not the number
        tensors = tensor_mismatch(self.state_dict(), checkpoint.get("state_dict") or {})
        if not other_method and tensors is None:
            return
        name = f"checkpoint {path}" if path else "the checkpoint"
        their_arch, my_arch = architecture_differences(dict(checkpoint.get("hyper_parameters") or {}), dict(self.hparams))
        same_identity = all(theirs[k] in (None, mine[k]) for k in mine)
        detail = f" ({tensors})" if tensors and same_identity and not their_arch else ""
        config = Path(path).parent.parent / "config.yaml" if path else None
        fix = (
            f"Use it with its own run's config: --config {config}"
            if config is not None and config.is_file()
            else "Pass the --model options it was trained with"
        )
        raise CheckpointMismatchError(
            f"{name} was trained as {describe(theirs)}{their_arch}; this run builds {describe(mine)}{my_arch}{detail}. {fix}."
        )
