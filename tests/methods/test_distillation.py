"""Knowledge distillation: the loss against hand computations and per-member loops, the teacher frozen and
out of the student's checkpoint, α = 1 as plain cross-entropy, the refusals, and a real teacher -> student run."""

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax
from torch.nn import functional as F

from ensemble_lab.cli import main
from ensemble_lab.data import DigitsDataModule
from ensemble_lab.errors import CheckpointMismatchError, ConfigError
from ensemble_lab.methods import MIMO, BatchEnsemble, DeepEnsemble, MCDropout, SingleModel
from ensemble_lab.methods.distillation import distillation_term, load_teacher, mix, soft_targets
from ensemble_lab.methods.training_batch import TrainingBatch
from tests.conftest import TINY_TRAINER, read_results, run_dirs
from tests.run_helpers import working_directory

SMALL = {"hidden_sizes": [16]}


def save_teacher(model: L.LightningModule, path: Path, **hparams) -> str:
    """``model`` as the CLI would checkpoint it: state_dict and hyper-parameters with its class path."""
    class_path = f"ensemble_lab.methods.{type(model).__name__}"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**dict(model.hparams), "_class_path": class_path, **hparams}}, path)
    return str(path)


@pytest.fixture
def teacher_of_2(tmp_path) -> str:
    torch.manual_seed(1)
    return save_teacher(DeepEnsemble(num_members=2, **SMALL), tmp_path / "teacher.ckpt")


# ---- the loss ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("match", ["mean", "member"])
def test_loss_equals_a_hand_computation(match):
    student = [[[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], [[0.0, 0.3, 0.1], [-1.0, 1.0, 3.0]]]  # (M=2, B=2, C=3)
    teacher = [[[2.0, 1.0, 0.0], [0.0, 0.0, 4.0]], [[1.0, -2.0, 0.5], [0.2, 1.5, -0.5]]]
    labels, T, alpha = [0, 2], 2.0, 0.3

    def probs(z: list[float], t: float) -> list[float]:
        e = [math.exp(v / t) for v in z]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(probs(student[m][b], 1.0)[labels[b]]) for m in range(2) for b in range(2)) / 4
    kl = 0.0
    for m in range(2):
        for b in range(2):
            if match == "mean":
                p_t = [(probs(teacher[0][b], T)[c] + probs(teacher[1][b], T)[c]) / 2 for c in range(3)]
            else:
                p_t = probs(teacher[m][b], T)
            p_s = probs(student[m][b], T)
            kl += sum(p_t[c] * (math.log(p_t[c]) - math.log(p_s[c])) for c in range(3))
    expected = alpha * ce + (1 - alpha) * T**2 * kl / 4

    s, t = torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64)
    loss = F.cross_entropy(s.reshape(4, 3), torch.tensor(labels).repeat(2))
    got = mix(loss, distillation_term(s, soft_targets(t, T, match, torch.arange(2)), T), alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def _student(method: type, teacher: str, match: str, **options) -> L.LightningModule:
    torch.manual_seed(0)
    model = method(teacher=teacher, distill_temperature=3.0, distill_alpha=0.25, distill_match=match, **SMALL, **options)
    model.distillation.load(model)
    return model


STUDENTS = [
    (BatchEnsemble, {"num_members": 2, "train_batch": "split"}, "member"),
    (BatchEnsemble, {"num_members": 2, "train_batch": "split"}, "mean"),
    (MIMO, {"num_members": 2, "batch_repetition": 2}, "member"),
    (DeepEnsemble, {"num_members": 2}, "mean"),  # sums its members' losses: the distillation term is summed too
    (MCDropout, {"num_members": 2, "dropout": 0.2}, "mean"),  # one dropout sample per image in training
]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("method, options, match", STUDENTS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_member_learns_the_teacher_on_its_own_rows(method, options, match, teacher_of_2):
    """The hook's loss against a per-member loop: student member m's rows (its split, MIMO's shuffles) shown to the teacher."""
    model, teacher = _student(method, teacher_of_2, match, **options), load_teacher(teacher_of_2)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    step = model.training_batch(x, y)
    logits = step.logits  # (M, B', C)
    loss = model.training_loss(logits, step.targets)
    got = model.distillation.loss(model, x, step, loss)
    if method is BatchEnsemble:
        seen = [torch.arange(4) + 4 * m for m in range(2)]  # member m trains on images [4m, 4m + 4)
    elif method is MIMO:
        seen = list(step.rows)  # the images it drew for member m
    else:
        seen = [torch.arange(8)] * logits.shape[0]
    T, kl = 3.0, []
    with torch.no_grad():
        for m in range(logits.shape[0]):
            p_t = softmax(teacher(x[seen[m]]).double().numpy() / T, axis=-1)  # (M_t, B', C)
            p_t = p_t.mean(0) if match == "mean" else p_t[m]
            log_s = log_softmax(logits[m].detach().double().numpy() / T, axis=-1)
            kl.append((p_t * (np.log(p_t) - log_s)).sum(-1).mean())
    members_summed = logits.shape[0] if method is DeepEnsemble else 1
    expected = 0.25 * loss.item() + 0.75 * T**2 * np.mean(kl) * members_summed
    assert got.item() == pytest.approx(expected, rel=1e-5)


# ---- training: frozen teacher, α = 1, the checkpoint -----------------------------------------------------
def _fit(steps: int = 4, **options) -> tuple[L.LightningModule, L.Trainer]:
    L.seed_everything(3, verbose=False)
    model = BatchEnsemble(num_members=2, dropout=0.1, **SMALL, **options)  # dropout: training draws random numbers
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    return model, trainer


def test_alpha_one_trains_like_cross_entropy_and_the_teacher_stays_frozen_and_out(teacher_of_2):
    plain, _ = _fit()
    same, _ = _fit(teacher=teacher_of_2, distill_alpha=1.0)
    before = {k: v.clone() for k, v in load_teacher(teacher_of_2).state_dict().items()}
    distilled, trainer = _fit(teacher=teacher_of_2, distill_alpha=0.5)
    assert list(same.state_dict()) == list(plain.state_dict()) == list(distilled.state_dict())  # no teacher.* keys
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), plain.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(distilled.state_dict().values(), plain.state_dict().values()))
    teacher = distilled.distillation.teacher
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert {id(p) for p in distilled.parameters()}.isdisjoint(id(p) for p in teacher.parameters())
    metrics = trainer.callback_metrics  # train/loss_epoch = α · train/ce + (1 − α) · train/distill
    mixed = 0.5 * metrics["train/ce"] + 0.5 * metrics["train/distill"]
    assert metrics["train/loss_epoch"].item() == pytest.approx(mixed.item(), rel=1e-5)


def test_member_matching_with_another_number_of_members_is_refused_before_training(teacher_of_2):
    with pytest.raises(ConfigError, match="teacher .* has 2 members and this student 3; pass --model.num_members 2"):
        L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, accelerator="cpu").fit(
            BatchEnsemble(num_members=3, teacher=teacher_of_2, distill_match="member", **SMALL), datamodule=DigitsDataModule()
        )


def test_a_list_of_single_models_is_assembled_into_a_deep_ensemble_teacher(tmp_path):
    singles = [SingleModel(**SMALL) for _ in range(2)]
    paths = [save_teacher(m, tmp_path / f"single_{i}.ckpt") for i, m in enumerate(singles)]
    teacher, x = load_teacher(paths), torch.rand(5, 1, 8, 8)
    assert isinstance(teacher, DeepEnsemble) and teacher.num_members == 2
    with torch.no_grad():
        assert all(torch.allclose(teacher(x)[i], singles[i].eval()(x)[0], atol=1e-6) for i in range(2))


# ---- refusals -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"teacher": "t.ckpt", "distill_temperature": 0.0}, "distillation.temperature must be a number > 0"),
        ({"teacher": "t.ckpt", "distill_alpha": 1.5}, r"distillation.alpha must be a number in \[0, 1\]"),
        ({"teacher": "t.ckpt", "distill_match": "members"}, "distillation.match 'members' is not known"),
        ({"teacher": []}, "--model.distillation.teacher must be a checkpoint path"),
        ({"distill_match": "member"}, "distill_match applies only when distilling; pass --model.distillation.teacher"),
    ],
)
def test_bad_options_are_refused_when_the_student_is_built(options, message):
    with pytest.raises(ConfigError, match=message):
        SingleModel(**options)


class SoftLabels(SingleModel):
    """A custom method training on smoothed labels whose rows do not line up with its logits."""

    def training_batch(self, x: torch.Tensor, y: torch.Tensor) -> TrainingBatch:
        step = super().training_batch(x, y)
        return TrainingBatch(step.logits, F.one_hot(y, 10).float() * 0.9 + 0.01, step.targets.float())


def test_a_method_whose_training_rows_are_unknown_is_refused(teacher_of_2):
    student = SoftLabels(teacher=teacher_of_2, **SMALL)
    student.distillation.load(student)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with pytest.raises(ConfigError, match=r"SoftLabels: its training_batch returns rows of shape \(4,\) for logits"):
        student.distillation.loss(student, x, student.training_batch(x, y), torch.zeros(()))


def test_a_method_with_the_old_training_hooks_is_refused_when_defined():
    """training_logits / training_targets are no longer called: defining them is an error, not a silent no-op."""
    with pytest.raises(TypeError, match="OldStyle defines training_logits, which ensemble-lab no longer calls"):
        type("OldStyle", (SingleModel,), {"training_logits": lambda self, x: self(x)})


def test_unusable_teachers_give_one_line_errors_naming_the_path(tmp_path):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "anonymous.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "torch.nn.Linear"}}, tmp_path / "linear.ckpt")
    five = save_teacher(SingleModel(num_classes=5, **SMALL), tmp_path / "five.ckpt")
    cases = {
        str(tmp_path / "missing.ckpt"): "does not exist",
        str(tmp_path): "is a directory; give a checkpoint file",
        str(tmp_path / "notes.ckpt"): "is not a checkpoint",
        str(tmp_path / "anonymous.ckpt"): "does not say which method",
        str(tmp_path / "linear.ckpt"): "holds a Linear, not an ensemble-lab method",
        five: r"predicts 5 classes from inputs of shape \[1, 8, 8\]; this student 10 classes",
    }
    for path, message in cases.items():
        student = SingleModel(teacher=path, **SMALL)
        with pytest.raises(CheckpointMismatchError, match=message) as error:
            student.distillation.load(student)
        assert path in str(error.value) and "\n" not in str(error.value)


# ---- the real CLI: a Deep Ensemble teacher, a BatchEnsemble student, its test and its resume -------------------
@pytest.mark.slow
def test_cli_student_of_a_deep_ensemble_fits_tests_and_resumes_to_the_same_weights(tmp_path):
    tiny = [*TINY_TRAINER, "--data=DigitsDataModule", "--model.backbone.hidden_sizes=[16]", "--figures=false", "--seed_everything=7"]
    with working_directory(tmp_path):
        main(["fit", *tiny, "--model=DeepEnsemble", "--model.num_members=2", "--test_after_fit=false"])
        teacher = str((run_dirs(tmp_path)[-1] / "checkpoints" / "last.ckpt").resolve())
        student = [*tiny, "--model=BatchEnsemble", "--model.num_members=2", f"--model.distillation.teacher={teacher}", "--model.distillation.match=member"]
        main(["fit", *student, "--trainer.max_epochs=2"])
        whole = run_dirs(tmp_path)[-1]
        main(["fit", *student, "--test_after_fit=false"])
        half = run_dirs(tmp_path)[-1]
        main(["fit", *student, "--trainer.max_epochs=2", "--test_after_fit=false", f"--ckpt_path={half / 'checkpoints' / 'last.ckpt'}"])
    results = read_results(whole)
    assert results["method"] == "BatchEnsemble" and {"digits", "digits_shifted", "photo_patches"} <= set(results["sets"])
    assert results["config"]["model.init_args.distillation.teacher"] == teacher  # a student of another teacher is another run
    load = lambda run: torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    uninterrupted, resumed = load(whole), load(half)
    assert uninterrupted["global_step"] == resumed["global_step"] == 6
    assert uninterrupted["hyper_parameters"]["distillation"]["teacher"] == teacher
    assert list(uninterrupted["state_dict"]) == list(BatchEnsemble(num_members=2, **SMALL).state_dict())  # no teacher tensors
    assert all(torch.equal(v, resumed["state_dict"][k]) for k, v in uninterrupted["state_dict"].items())
