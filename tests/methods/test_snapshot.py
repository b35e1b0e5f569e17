"""SnapshotEnsemble: its members are the weights at the planned moments, the learning rate follows the paper's
cyclic cosine, forward is the members' networks, a resumed fit ends where an uninterrupted one does."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ensemble_lab.data.digits import DigitsDataModule
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation.member_networks import member_state
from ensemble_lab.methods import SnapshotEnsemble
from ensemble_lab.methods.snapshot import cyclic_cosine_factor, snapshot_steps
from ensemble_lab.metrics.cost import parameter_counts
from ensemble_lab.metrics.weight_space import weight_cosine_stored

# a ResNet-18 of width 2 on digits: BatchNorm statistics must travel with every snapshot
RESNET = dict(backbone="resnet18", width=2, input_shape=(1, 8, 8), num_classes=10)
MLP = dict(hidden_sizes=[16], input_shape=(1, 8, 8), num_classes=10)
BATCHES, EPOCHS = 3, 4  # optimizer steps per epoch (limit_train_batches) and epochs: T = 12


class Recorder(Callback):
    """Independently of the method: the lr of every optimizer step, the trained network's full state after
    chosen steps, and how many members each validation scores."""

    def __init__(self, steps: list[int], probe: torch.Tensor) -> None:
        self.steps, self.probe = steps, probe
        self.lrs: list[tuple[int, float]] = []
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.validated: list[int] = []
        self.cosines: list[float | None] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append((trainer.global_step, optimizer.param_groups[0]["lr"]))  # the step about to be taken

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step in self.steps:
            self.states[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.current.state_dict().items()}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validated.append(pl_module(self.probe).shape[0])

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            value = trainer.callback_metrics.get("val/weight_cosine")
            self.cosines.append(None if value is None else float(value))


def trainer(tmp_path, *callbacks: Callback, every_n_train_steps: int | None = None, epochs: int = EPOCHS, batches: int = BATCHES, val_batches: int = 1) -> L.Trainer:
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=every_n_train_steps, save_top_k=0)
    return L.Trainer(
        max_epochs=epochs, limit_train_batches=batches, limit_val_batches=val_batches, num_sanity_val_steps=0, accelerator="cpu",
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoints, *callbacks],
    )  # fmt: skip


def fit(tmp_path, model_options: dict, *callbacks: Callback, seed: int = 3, **trainer_options) -> SnapshotEnsemble:
    L.seed_everything(seed)
    model = SnapshotEnsemble(optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), **model_options)
    trainer(tmp_path, *callbacks, **trainer_options).fit(model, datamodule=DigitsDataModule(batch_size=16))
    return model


@pytest.fixture(scope="module")
def cycles(tmp_path_factory):
    """M = 3 cycles over T = 12 steps: cycles of 12/3 = 4 steps, members after steps 4, 8 and 12."""
    probe = torch.rand(5, 1, 8, 8)
    recorder = Recorder([4, 8, 12], probe)
    model = fit(tmp_path_factory.mktemp("cycles"), dict(num_members=3, **MLP), recorder)
    return model, recorder, probe


def test_member_m_is_the_weights_at_the_end_of_cycle_m(cycles):
    model, recorder, _ = cycles
    plain = model.member_network()
    assert model.snapshot_steps.tolist() == [4, 8, 12]
    for m, step in enumerate([4, 8, 12]):
        member = member_state(model.network, plain, m)
        assert member.keys() == recorder.states[step].keys()
        for key, value in recorder.states[step].items():
            assert torch.equal(member[key], value), (m, key)
    assert not torch.equal(recorder.states[4]["1.weight"], recorder.states[8]["1.weight"])


def test_the_learning_rate_restarts_and_falls_along_a_cosine_every_step(cycles):
    _, recorder, _ = cycles
    steps, lrs = zip(*recorder.lrs)
    assert list(steps) == list(range(12))
    cycle = 12 // 3
    expected = [0.05 / 2 * (math.cos(math.pi * (t % cycle) / cycle) + 1) for t in range(12)]  # Huang et al., eq. (2)
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[0] == lrs[4] == lrs[8] == 0.05 and lrs[3] < 0.01


def test_cycles_that_do_not_divide_the_steps_differ_by_one_step_and_each_anneals():
    """T = 12, M = 5: cycles end after ⌊12·(m + 1)/5⌋ = 2, 4, 7, 9, 12 steps; each restarts and anneals over its own length."""
    ends = snapshot_steps("cycles", 5, 12, 4)
    assert ends == [2, 4, 7, 9, 12]
    starts = [0, 2, 4, 7, 9]
    for t in range(12):
        k = max(i for i, s in enumerate(starts) if s <= t)
        length = ends[k] - starts[k]
        assert cyclic_cosine_factor(t, ends) == pytest.approx(0.5 * (math.cos(math.pi * (t - starts[k]) / length) + 1), abs=1e-15)
    assert snapshot_steps("last_epochs", 3, 12, 4) == [6, 9, 12]  # 3 steps an epoch: after epochs 1, 2, 3
    with pytest.raises(ConfigError, match="4 optimizer steps do not make 5 snapshot cycles"):
        snapshot_steps("cycles", 5, 4, 1)


def expected_logits(model: SnapshotEnsemble, states: list[dict[str, torch.Tensor]], probe: torch.Tensor) -> torch.Tensor:
    """Each member as its own plain network loaded with the recorded weights, one after the other: (M, B, K)."""
    outputs = []
    for state in states:
        network = model.member_network()
        network.load_state_dict(state)
        outputs.append(network.eval()(probe))
    return torch.stack(outputs)


def test_forward_is_a_loop_over_the_members_networks_and_validation_scores_the_snapshots_so_far(cycles):
    model, recorder, probe = cycles
    model.eval()
    assert torch.allclose(model(probe), expected_logits(model, [recorder.states[s] for s in (4, 8, 12)], probe), atol=1e-6)
    # validation after epochs 0..3 (steps 3, 6, 9, 12): the members taken by then, plus the weights in training
    assert recorder.validated == [1, 1 + 1, 2 + 1, 3]


def test_val_weight_cosine_is_the_snapshots_so_far(cycles):
    _, recorder, _ = cycles
    rows = torch.stack([torch.cat([v.flatten() for v in recorder.states[s].values()]).double() for s in (4, 8, 12)])  # MLP: every tensor a parameter
    cosine = (rows @ rows.T) / torch.outer(rows.norm(dim=1), rows.norm(dim=1))
    # validation after steps 3 and 6: fewer than two snapshots, no curve point; after 9: snapshots 0 and 1; after 12: all three
    assert recorder.cosines[:2] == [None, None]
    assert recorder.cosines[2] == pytest.approx(float(cosine[0, 1]), rel=1e-6)
    assert recorder.cosines[3] == pytest.approx(float(cosine[[0, 0, 1], [1, 2, 2]].mean()), rel=1e-6)


def test_snapshots_carry_their_batchnorm_statistics(tmp_path):
    """A ResNet of two one-step cycles: each member holds the running statistics of its moment."""
    probe = torch.rand(4, 1, 8, 8)
    recorder = Recorder([1, 2], probe)
    model = fit(tmp_path, dict(num_members=2, **RESNET), recorder, epochs=2, batches=1, val_batches=0)
    plain = model.member_network()
    for m, step in enumerate([1, 2]):
        member = member_state(model.network, plain, m)
        stats = [k for k in recorder.states[step] if "running_" in k]
        assert stats and all(torch.equal(member[k], recorder.states[step][k]) for k in stats)
    assert not torch.equal(recorder.states[1]["bn1.running_mean"], recorder.states[2]["bn1.running_mean"])
    model.eval()
    assert torch.allclose(model(probe), expected_logits(model, [recorder.states[1], recorder.states[2]], probe), atol=1e-5)


def test_the_network_in_training_counts_in_no_member_reading(cycles):
    model, _, _ = cycles
    member = model.member_network()
    per_network = sum(p.numel() for p in member.parameters())
    assert parameter_counts(model, 3) == (3 * per_network, per_network)
    params = {k for k, _ in member.named_parameters()}
    rows = [torch.cat([v.flatten() for k, v in member_state(model.network, member, m).items() if k in params]).double() for m in range(3)]
    gram = torch.stack(rows) @ torch.stack(rows).T
    norms = gram.diagonal().sqrt()
    assert torch.allclose(weight_cosine_stored(model), gram / torch.outer(norms, norms), atol=1e-9)


def test_last_epochs_takes_the_last_m_epochs_weights(tmp_path):
    recorder = Recorder([6, 9, 12], torch.rand(2, 1, 8, 8))  # epochs 1, 2, 3 end after steps 6, 9, 12
    model = fit(tmp_path, dict(num_members=3, snapshot="last_epochs", **MLP), recorder)
    plain = model.member_network()
    for m, step in enumerate([6, 9, 12]):
        member = member_state(model.network, plain, m)
        assert all(torch.equal(member[k], v) for k, v in recorder.states[step].items()), m
    assert all(lr == 0.05 for _, lr in recorder.lrs)  # the recipe's schedule: none here


class StopAt(Callback):
    """Stops the fit after optimizer step ``step``, as an interruption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_a_fit_resumed_mid_run_ends_with_the_uninterrupted_fits_members(tmp_path):
    options = dict(num_members=3, dropout=0.1, **MLP)  # dropout: the random stream must be restored too
    whole = fit(tmp_path / "whole", options).state_dict()
    # the checkpoint after step 8 is written before member 1 is taken at that step: the resume takes it
    fit(tmp_path / "part", options, StopAt(8), every_n_train_steps=4)
    saved = torch.load(tmp_path / "part" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 8 and saved["state_dict"]["snapshot_steps"].tolist() == [4, -1, -1]
    L.seed_everything(99)  # the resume must not depend on the seed it starts with
    resumed = SnapshotEnsemble(optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), **options)
    assert resumed.snapshot_steps.tolist() == [-1, -1, -1]
    trainer(tmp_path / "part").fit(resumed, datamodule=DigitsDataModule(batch_size=16), ckpt_path=tmp_path / "part" / "last.ckpt")
    assert resumed.snapshot_steps.tolist() == [4, 8, 12]
    state = resumed.state_dict()
    assert state.keys() == whole.keys()
    assert all(torch.equal(whole[k], state[k]) for k in whole), [k for k in whole if not torch.equal(whole[k], state[k])]


def test_options_that_cannot_place_the_snapshots_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="drop --model.lr_scheduler"):
        SnapshotEnsemble(lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1), **MLP)
    with pytest.raises(ConfigError, match="--model.snapshot 'every'"):
        SnapshotEnsemble(snapshot="every", **MLP)  # type: ignore[arg-type]
    model = SnapshotEnsemble(num_members=5, snapshot="last_epochs", **MLP)
    with pytest.raises(ConfigError, match="train at least 5 epochs"):
        L.Trainer(max_epochs=EPOCHS, limit_train_batches=BATCHES, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
            model, datamodule=DigitsDataModule(batch_size=16)
        )
    with pytest.raises(ConfigError, match="holds 0 of its 5 members"):
        model.on_test_start()
