"""The optional training objectives' options: ``--model.distillation.*`` and ``--model.repulsion.*``.

Each is an options object on the model (None: off), so an option without its feature is refused by the
parser (``--model.distillation.alpha`` without ``--model.distillation.teacher``), and each knows how to add
its term to a training loss. The implementations live in ``distillation`` and ``repulsion``; the
distillation machinery (reading a teacher checkpoint) is imported only by runs that distil.
"""

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ensemble_lab.errors import ConfigError
from ensemble_lab.methods.repulsion import DEFAULT_BANDWIDTH, add_repulsion

if TYPE_CHECKING:  # for annotations only
    from ensemble_lab.methods.distillation import Distillation

#: how a distilled student matches its teacher
MATCHES = ("mean", "member")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class DistillationOptions:
    """Knowledge distillation: loss = α · (the method's loss: cross-entropy) + (1 − α) · T² · KL(teacher_T ‖ student_T).

    Args:
        teacher: the checkpoint of an ensemble-lab run of any method (<run>/checkpoints/last.ckpt), or a list of
            SingleModel checkpoints assembled into a Deep Ensemble ([a.ckpt,b.ckpt,...]). Read when fit starts;
            frozen, in eval mode, on the student's batch; only its path is stored with the student.
        temperature: T > 0: teacher and student probabilities are both softmax(logits / T).
        alpha: α in [0, 1], the weight of the method's own loss; 1: cross-entropy only.
        match: "mean" (every student member learns the teacher members' mean probabilities) or "member"
            (student member i learns teacher member i; the numbers of members must match).
    """

    teacher: str | list[str]
    temperature: float = 4.0
    alpha: float = 0.5
    match: str = "mean"

    def __post_init__(self) -> None:
        paths = self.teacher if isinstance(self.teacher, list) else [self.teacher]
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise ConfigError(
                f"--model.distillation.teacher must be a checkpoint path or a list of SingleModel checkpoint paths, got {self.teacher!r}"
            )
        if not _number(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"--model.distillation.temperature must be a number > 0, got {self.temperature!r}")
        if not _number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--model.distillation.alpha must be a number in [0, 1] (1: cross-entropy only), got {self.alpha!r}")
        if self.match not in MATCHES:
            raise ConfigError(f"--model.distillation.match {self.match!r} is not known; allowed: {', '.join(MATCHES)}")

    def record(self) -> dict[str, Any]:
        """The options as plain values (what a checkpoint's hyper-parameters hold)."""
        return asdict(self)

    def build(self) -> "Distillation":
        """The student's Distillation (its teacher is read later, when fit starts)."""
        # imported here: only a run that distils needs the teacher machinery (checkpoint reading, assembly)
        from ensemble_lab.methods.distillation import Distillation  # noqa: PLC0415

        return Distillation(self.teacher, float(self.temperature), float(self.alpha), self.match)


@dataclass
class RepulsionOptions:
    """A repulsive term: + λ · mean over member pairs and images of exp(−‖p_i − p_j‖² / (2σ²)) added to the
    training loss (p: the members' softmax probabilities), pushing members apart in function space; logged as
    train/repulsion. Needs M >= 2 members trained on the same images.

    Args:
        strength: λ >= 0 (0 adds nothing).
        bandwidth: σ > 0 of the kernel (squared distances of probability vectors lie in [0, 2]).
    """

    strength: float
    bandwidth: float = DEFAULT_BANDWIDTH

    def __post_init__(self) -> None:
        for name, value, low in (("strength", self.strength, "λ >= 0"), ("bandwidth", self.bandwidth, "σ > 0")):
            if not _number(value):
                raise ConfigError(f"--model.repulsion.{name} must be a finite number ({low}), got {value!r}")
        if self.strength < 0 or self.bandwidth <= 0:
            raise ConfigError(
                f"--model.repulsion.strength must be >= 0 and --model.repulsion.bandwidth > 0, got {self.strength} and {self.bandwidth}"
            )

    def record(self) -> dict[str, Any]:
        """The options as plain values (what a checkpoint's hyper-parameters hold)."""
        return asdict(self)

    def check_members(self, num_members: int) -> None:
        """ConfigError unless the model has the M >= 2 members the term pushes apart (when λ > 0)."""
        if self.strength > 0 and num_members < 2:
            raise ConfigError(f"--model.repulsion pushes members apart: it needs --model.num_members >= 2, got {num_members}")

    def add(self, method_name: str, logits: Tensor, targets: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
        """(loss + λ · kernel, kernel) on the training logits (M, B', C) and targets (see ``add_repulsion``)."""
        return add_repulsion(method_name, logits, targets, loss, float(self.strength), float(self.bandwidth))


def distillation_from(value: "DistillationOptions | dict[str, Any] | None") -> DistillationOptions | None:
    """The options object from what Python, a config or a checkpoint gives (an object, a mapping or None)."""
    return DistillationOptions(**value) if isinstance(value, dict) else value


def repulsion_from(value: "RepulsionOptions | dict[str, Any] | None") -> RepulsionOptions | None:
    """The options object from what Python, a config or a checkpoint gives (an object, a mapping or None)."""
    return RepulsionOptions(**value) if isinstance(value, dict) else value
