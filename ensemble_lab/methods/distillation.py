"""Knowledge distillation: a student (any method) trains against a frozen teacher's softened predictions.

Per training step: loss = α · (the method's own loss: cross-entropy) + (1 − α) · T² · KL(teacher_T ‖ student_T),
where softmax at temperature T is applied to both sides. "mean" matching: every student member learns the
mean of the teacher members' probabilities at T; "member" matching: student member i learns teacher member i.

The teacher is an ensemble-lab checkpoint of any method (rebuilt from its ``_class_path`` and loaded
strictly) or a list of SingleModel checkpoints assembled into a Deep Ensemble. It is read when fit starts
(not when the student is built, so ``test`` of a student or a study's argument check never needs it), kept
in eval mode with frozen weights, and held outside the student's modules: the student's state_dict and
checkpoints hold only the teacher's path (in the hyper-parameters), and a resumed fit reads it again.
"""

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ensemble_lab.errors import CheckpointMismatchError, ConfigError, EnsembleLabError
from ensemble_lab.methods.checkpoint_state import CheckpointStateMixin, architecture, read_checkpoint
from ensemble_lab.methods.training_batch import TrainingBatch
from ensemble_lab.nn import weights_from_checkpoint
from ensemble_lab.runs.checkpoint_files import load_checkpoint
from ensemble_lab.runs.legacy_keys import translate_model_args

if TYPE_CHECKING:  # for annotations only: base.py imports this module
    from ensemble_lab.methods.base import EnsembleModule

#: the class of a teacher given as a list of SingleModel checkpoints, resolved by name like a checkpoint's
#: recorded ``_class_path`` (the methods are defined above this module: base.py builds a Distillation)
ASSEMBLED_TEACHER = "ensemble_lab.methods.deep_ensemble.DeepEnsemble"

#: hyper-parameters a teacher is not rebuilt with: its own teacher, its assembly paths (the state_dict holds the
#: weights), compilation (a first-call cost for nothing)
REBUILD_OVERRIDES: dict[str, Any] = {"distillation": None, "member_checkpoints": None, "compile": False}


def _method_class(path: Path, checkpoint: dict[str, Any]) -> type:
    """The LightningModule class a checkpoint was trained as: its ``_class_path`` (written by the CLI), else
    the method name ensemble-lab stores with it."""
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    method = (checkpoint.get("ensemble_lab") or {}).get("method")
    if class_path is None and method is None:
        raise CheckpointMismatchError(
            f"teacher checkpoint {path} does not say which method it was trained as; give a checkpoint ensemble-lab fit wrote"
        )
    return _class_at(path, class_path or f"ensemble_lab.methods.{method}")


def _class_at(path: Path, class_path: str) -> type:
    """The ensemble-lab method class named ``class_path`` (module.Class), imported by name."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise CheckpointMismatchError(
            f"teacher checkpoint {path} was trained as {module_name}.{name}, which cannot be imported here ({e})"
        ) from e
    # every ensemble-lab method (EnsembleModule) and only they carry ensemble-lab's checkpoint state
    if not (isinstance(cls, type) and issubclass(cls, CheckpointStateMixin)):
        raise CheckpointMismatchError(f"teacher checkpoint {path} holds a {name}, not an ensemble-lab method")
    return cls


def _checkpoint_teacher(path: Path) -> "EnsembleModule":
    """Any method's checkpoint: the class rebuilt from its hyper-parameters, its state_dict loaded strictly."""
    checkpoint = load_checkpoint(path, "teacher checkpoint")  # a directory, empty or truncated file: one line naming it
    cls = _method_class(path, checkpoint)
    recorded = checkpoint.get("hyper_parameters") or {}
    translated, _ = translate_model_args(recorded, recorded.get("_class_path"))  # a checkpoint written before options had objects
    options = {k: v for k, v in translated.items() if not k.startswith("_")}
    try:
        with weights_from_checkpoint():  # its state_dict replaces every weight: no pretrained timm download
            teacher = cls(**{**options, **{k: v for k, v in REBUILD_OVERRIDES.items() if k in options}})
        teacher.load_state_dict(checkpoint["state_dict"], strict=True)
    except (TypeError, RuntimeError, EnsembleLabError) as e:
        reason = str(e).splitlines()[0]
        raise CheckpointMismatchError(
            f"teacher checkpoint {path} cannot be rebuilt as the {cls.__name__} it was trained as: {reason}"
        ) from e
    return teacher


def _assembled_teacher(paths: list[str]) -> "EnsembleModule":
    """A Deep Ensemble of SingleModel checkpoints (member i: ``paths[i]``), assembled as ``test`` does."""
    try:
        hparams, _ = read_checkpoint(Path(paths[0]).expanduser())
        deep_ensemble = _class_at(Path(paths[0]), ASSEMBLED_TEACHER)
        return deep_ensemble(member_checkpoints=paths, dropout=float(hparams.get("dropout", 0.0)), **architecture(hparams))
    except EnsembleLabError as e:
        raise type(e)(f"--model.distillation.teacher: {e}") from e


def load_teacher(teacher: str | list[str]) -> "EnsembleModule":
    """The teacher in eval mode with frozen weights, on the CPU; the global torch RNG is left as it was, so a
    student's random stream (initial weights aside, data order, dropout) does not depend on having a teacher.

    Args:
        teacher: a checkpoint of any ensemble-lab method, or a list of SingleModel checkpoints.
    """
    with torch.random.fork_rng(devices=[]):  # building a network draws initial weights
        model = _assembled_teacher(teacher) if isinstance(teacher, list) else _checkpoint_teacher(Path(teacher).expanduser())
    model.requires_grad_(False)
    return model.eval()


def soft_targets(teacher_logits: Tensor, temperature: float, match: str, rows: Tensor) -> Tensor:
    """What the student learns: teacher probabilities at temperature T on the rows each student member saw.

    Args:
        teacher_logits: (M_t, B, C), the teacher's members on the whole batch.
        temperature: T; both sides are softened by it.
        match: "mean" (the teacher members' mean probabilities) or "member" (teacher member i for student member i).
        rows: which batch image each training row is: (B',) shared by every student member, or (M, B'),
            row i for student member i (``TrainingBatch.rows``).
    Returns:
        (1, B', C) for "mean" with shared rows, else (M, B', C): broadcastable to the student's training logits.
    """
    probs = torch.softmax(teacher_logits.float() / temperature, dim=-1)  # (M_t, B, C)
    if match == "mean":
        mean = probs.mean(0)  # (B, C)
        return mean[rows].unsqueeze(0) if rows.dim() == 1 else mean[rows]  # (1, B', C) or (M, B', C)
    if rows.dim() == 1:
        return probs[:, rows]  # (M_t, B', C)
    if rows.shape[0] != probs.shape[0]:
        raise ConfigError(f"--model.distillation.match member: this student trains {rows.shape[0]} members, the teacher has {probs.shape[0]}")
    member = torch.arange(rows.shape[0], device=rows.device).unsqueeze(1)  # (M, 1)
    return probs[member, rows]  # (M, B', C): [i, j] = teacher member i on image rows[i, j]


def distillation_term(student_logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """T² · KL(targets ‖ softmax(student / T)), averaged over members and rows (a scalar).

    Args:
        student_logits: (M, B', C) training logits.
        targets: soft targets from :func:`soft_targets`, broadcastable to ``student_logits``.
        temperature: T.
    """
    log_student = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # (M, B', C)
    kl = F.kl_div(log_student, targets.expand_as(log_student), reduction="none").sum(-1)  # (M, B'): Σ_c p_t (log p_t − log p_s)
    return temperature**2 * kl.mean()


def mix(loss: Tensor, distill: Tensor, alpha: float) -> Tensor:
    """α · loss + (1 − α) · distill: α = 1 is the loss itself, bit for bit (its gradient too)."""
    return alpha * loss + (1.0 - alpha) * distill


class Distillation:
    """A student's teacher and how the student learns from it; not an nn.Module, so the teacher stays out of
    the student's state_dict, parameters and train() / eval() switches."""

    def __init__(self, teacher: str | list[str], temperature: float, alpha: float, match: str) -> None:
        """
        Args:
            teacher: a checkpoint of any ensemble-lab method, or a list of SingleModel checkpoints.
            temperature: T > 0.
            alpha: weight of the method's own loss, in [0, 1].
            match: "mean" or "member".
        """
        self.source = teacher
        self.temperature, self.alpha, self.match = float(temperature), float(alpha), match
        self.teacher: nn.Module | None = None

    def describe(self) -> str:
        """The teacher's path(s), as the messages name it."""
        return ", ".join(self.source) if isinstance(self.source, list) else self.source

    def load(self, student: "EnsembleModule") -> None:
        """Read the teacher (once) and check it against the student: classes, input shape, and for "member"
        matching the number of members. Called when fit starts, before any training step."""
        if self.teacher is not None:
            return
        teacher = load_teacher(self.source)
        theirs = (int(teacher.hparams["num_classes"]), [int(v) for v in teacher.hparams["input_shape"]])
        mine = (int(student.hparams["num_classes"]), [int(v) for v in student.hparams["input_shape"]])
        if theirs != mine:
            raise CheckpointMismatchError(
                f"teacher {self.describe()} predicts {theirs[0]} classes from inputs of shape {theirs[1]}; this student "
                f"{mine[0]} classes from {mine[1]}. Distil from a teacher trained on the student's data."
            )
        if self.match == "member" and teacher.num_members != student.num_members:
            raise ConfigError(
                f"--model.distillation.match member pairs student member i with teacher member i, but the teacher "
                f"{self.describe()} has {teacher.num_members} members and this student {student.num_members}; "
                f"pass --model.num_members {teacher.num_members} or --model.distillation.match mean"
            )
        self.teacher = teacher

    def _teacher_logits(self, images: Tensor, student: "EnsembleModule") -> Tensor:
        """The teacher's member logits (M_t, B, C) on ``images``, on their device and in the student's dtype."""
        teacher = self.teacher
        if teacher is None:
            raise RuntimeError("Distillation.load(student) must run before training (EnsembleModule.on_fit_start does)")
        weight = next(student.parameters())
        placed = next(teacher.parameters())
        if placed.device != images.device or placed.dtype != weight.dtype:  # the trainer moves the student only
            teacher.to(device=images.device, dtype=weight.dtype)
        with torch.no_grad():
            return teacher(images)

    def loss(self, student: "EnsembleModule", images: Tensor, step: TrainingBatch, loss: Tensor) -> Tensor:
        """The student's training loss with the teacher's term mixed in; logs train/ce and train/distill.

        Args:
            student: the model being trained.
            images: the (augmented) batch the student trained on, (B, ...).
            step: the student's ``training_batch`` on it: logits (M, N, C), and ``rows``, which image each
                training row is (a member's own split, MIMO's draws), so the teacher sees the same images.
            loss: the method's own training loss on them.
        """
        logits, rows = step.logits, step.rows
        if rows.dtype.is_floating_point or rows.shape[-1] != logits.shape[1] or (rows.dim() == 2 and rows.shape[0] != logits.shape[0]):
            raise ConfigError(
                f"{type(student).__name__}: its training_batch returns rows of shape {tuple(rows.shape)} for logits of shape "
                f"{tuple(logits.shape)}; rows must say which image each training row is ((N,) or (M, N) integers)"
            )
        targets = soft_targets(self._teacher_logits(images, student), self.temperature, self.match, rows)
        if targets.shape[0] not in (1, logits.shape[0]):
            raise ConfigError(
                f"--model.distillation.match member: {type(student).__name__} trains {logits.shape[0]} member(s) per step "
                f"(its training logits), the teacher has {targets.shape[0]}; use --model.distillation.match mean"
            )
        distill = distillation_term(logits, targets, self.temperature)  # per member, as the logged loss is
        unit = student.logged_loss(torch.ones((), device=loss.device), logits.detach())  # 1 / (how the method sums members)
        images_seen = rows.shape[-1]
        student.log_dict(
            {"train/ce": student.logged_loss(loss.detach(), logits.detach()), "train/distill": distill.detach()},
            on_step=False,
            on_epoch=True,
            batch_size=images_seen,
        )
        return mix(loss, distill / unit, self.alpha)
