"""``--data.train_batch independent``: each member its own shuffle, member-major batches, resumable mid-epoch."""

import pytest
import torch
from torch.utils.data import TensorDataset

from ensemble_lab.data import TabularDataModule
from ensemble_lab.data.sampler import MemberShuffleSampler
from ensemble_lab.errors import ConfigError
from tests.conftest import TINY_TRAINER


def batches(sampler: MemberShuffleSampler, members: int, batch: int) -> list[torch.Tensor]:
    """The sampler's epoch as (M, b) index tensors, one per training batch."""
    flat = torch.tensor(list(sampler))
    steps, start = [], 0
    while start < len(flat):
        rows = min(batch, (len(flat) - start) // members)
        steps.append(flat[start : start + members * rows].view(members, rows))
        start += members * rows
    return steps


def test_every_member_sees_every_row_once_in_its_own_order():
    dataset = TensorDataset(torch.arange(23))
    sampler = MemberShuffleSampler(dataset, seed=5, members=3, batch_size=4)
    sampler.set_epoch(2)
    steps = batches(sampler, 3, 4)
    assert len(sampler) == 3 * 23 and [s.shape[1] for s in steps] == [4] * 5 + [3]
    orders = torch.cat(steps, dim=1)  # (M, N): member m's order of the epoch
    for member in orders:
        assert sorted(member.tolist()) == list(range(23))
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    sampler.set_epoch(3)
    assert not torch.equal(torch.cat(batches(sampler, 3, 4), dim=1), orders)  # a new shuffle every epoch


def test_a_resume_skips_the_same_batches_in_every_members_order():
    dataset = TensorDataset(torch.arange(23))
    full = MemberShuffleSampler(dataset, seed=5, members=3, batch_size=4)
    full.set_epoch(1)
    expected = batches(full, 3, 4)[2:]
    resumed = MemberShuffleSampler(dataset, seed=5, members=3, batch_size=4)
    resumed.set_epoch(1)
    resumed.resume(1, 2 * 4)  # two batches of 4 rows per member were used before the interruption
    assert all(torch.equal(a, b) for a, b in zip(batches(resumed, 3, 4), expected, strict=True))


def test_the_datamodule_serves_m_times_b_rows_and_checks_the_option():
    dm = TabularDataModule("diabetes", batch_size=8, train_batch="independent")
    dm.setup("fit")
    dm.members_per_batch = 3  # what the model sets when fit starts
    features, targets, indices = next(iter(dm.train_dataloader()))
    assert features.shape == (24, 10) and targets.shape == (24, 1)
    torch.testing.assert_close(features, dm.train_set.images[indices])  # member-major rows of the training set
    with pytest.raises(ConfigError, match="--data.train_batch 'tiled' is not known"):
        TabularDataModule("diabetes", train_batch="tiled")  # type: ignore[arg-type]


def test_a_checkpointed_position_resumes_every_members_order():
    def loader_batches(state: dict | None) -> list[torch.Tensor]:
        dm = TabularDataModule("diabetes", batch_size=8, train_batch="independent")
        dm.setup("fit")
        dm.members_per_batch = 3
        if state is not None:
            dm.load_state_dict(state)
        else:
            dm._shuffle_seed = 11
        return [indices for _, _, indices in dm.train_dataloader()]

    fresh = loader_batches(None)
    resumed = loader_batches({"shuffle_seed": 11, "train_epoch": 0, "train_batches": 2})
    assert len(resumed) == len(fresh) - 2
    assert all(torch.equal(a, b) for a, b in zip(resumed, fresh[2:], strict=True))


def test_a_method_with_its_own_rows_refuses_in_one_line(cli, capsys):
    with pytest.raises(SystemExit) as info:
        cli("fit", "--model=MIMO", "--model.backbone=mlp", "--data=TabularDataModule", "--data.dataset=diabetes",
            "--data.train_batch=independent", *TINY_TRAINER)  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--data.train_batch independent" in err and "MIMO chooses its own training rows" in err
