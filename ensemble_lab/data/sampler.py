"""Training order that a resumed run reproduces exactly, even from a checkpoint taken mid-epoch.

The order of epoch e is a pure function of (seed, e) (a seeded permutation, split across DDP
ranks like DistributedSampler). The datamodule counts the training batches it has prepared in the
current epoch and saves (seed, epoch, batches) in every checkpoint; on resume the sampler skips
exactly those batches, so the next batch is the one the interrupted run would have drawn next.
Lightning restores its loop counters but not this position: without it a mid-epoch resume
replays the epoch from a different (freshly shuffled) order.
"""

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, DistributedSampler

if TYPE_CHECKING:
    import lightning as L


class EpochShuffleSampler(DistributedSampler):
    """Seeded per-epoch shuffle that can skip the samples a resumed epoch already used.

    A DistributedSampler subclass, so Lightning uses it as is under DDP (``num_replicas`` ranks)
    instead of wrapping it; with one process it is a plain seeded shuffle.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        """
        Args:
            dataset: the training set.
            seed: shuffle seed; epoch e uses the permutation seeded with seed + e.
            num_replicas: number of DDP processes sharing the epoch.
            rank: this process's index among them.
        """
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._resume: tuple[int, int] | None = None  # (epoch, samples of it already used)

    def resume(self, epoch: int, skip: int) -> None:
        """The next iteration of ``epoch`` leaves out its first ``skip`` samples (this rank's)."""
        self._resume = (epoch, skip)

    def _order(self) -> list[int]:
        """This rank's indices of the current epoch, in order."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[int]:
        indices = self._order()
        if self._resume is not None and self.epoch >= self._resume[0]:
            epoch, skip = self._resume
            self._resume = None  # only the first epoch after a resume is partial
            if epoch == self.epoch:
                indices = indices[skip:]
        return iter(indices)


#: member m's shuffle of epoch e is seeded with seed + e + MEMBER_SEED_STRIDE · m
MEMBER_SEED_STRIDE = 1_000_003


class MemberShuffleSampler(EpochShuffleSampler):
    """Independent batches (TabM's recipe): each of M members draws its own batch from its own seeded shuffle.

    Batches hold M·B indices, member-major: rows [m·B, (m+1)·B) are member m's next B rows of its own
    permutation of the epoch (the last batch b < B rows per member). Every member sees every row once per
    epoch; a resume skips the same number of batches in every member's order.
    """

    def __init__(self, dataset: Dataset, seed: int, members: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        """
        Args:
            dataset: the training set.
            seed: shuffle seed (member m, epoch e: seed + e + MEMBER_SEED_STRIDE · m).
            members: M, the members drawing their own batches.
            batch_size: B, rows per member per batch.
            num_replicas: number of DDP processes sharing the epoch.
            rank: this process's index among them.
        """
        super().__init__(dataset, seed, num_replicas=num_replicas, rank=rank)
        self.members, self.member_batch = members, batch_size

    def __len__(self) -> int:
        return self.members * self.num_samples

    def resume(self, epoch: int, skip: int) -> None:
        """``skip`` samples of every member's order: ``skip`` · M indices of the member-major stream."""
        super().resume(epoch, skip * self.members)

    def _order(self) -> list[int]:
        size = len(self.dataset)  # type: ignore[arg-type]
        orders = []
        for member in range(self.members):  # M permutations, built once per epoch (not a per-step loop)
            generator = torch.Generator().manual_seed(self.seed + self.epoch + MEMBER_SEED_STRIDE * member)
            order = torch.randperm(size, generator=generator)
            order = order.repeat(-(-self.total_size // size))[: self.total_size]  # padded as DistributedSampler pads
            orders.append(order[self.rank : self.total_size : self.num_replicas])
        stacked = torch.stack(orders)  # (M, S)
        steps = stacked.split(self.member_batch, dim=1)  # each (M, b): one batch's rows per member
        return torch.cat([step.reshape(-1) for step in steps]).tolist()  # member-major within each batch


class ResumableTrainOrder:
    """Mix into a LightningDataModule: a resumable training order kept in its checkpoint state."""

    _shuffle_seed: int | None = None
    _position: tuple[int, int] = (0, 0)  # (epoch, training batches prepared in it)
    _resume_at: tuple[int, int] | None = None
    #: members drawing their own batches (``--data.train_batch independent``; set by the model): 1 = one shared batch
    members_per_batch: int = 1
    # provided by the datamodule this is mixed into
    batch_size: int  # training batch size
    trainer: "L.Trainer | None"  # set by Lightning once the datamodule is attached

    def train_sampler(self, dataset: Dataset) -> EpochShuffleSampler:
        """The training sampler, positioned where a restored checkpoint left off."""
        trainer = getattr(self, "trainer", None)
        if self._shuffle_seed is None:
            # seed_everything seeds torch, so the order follows the run's seed (and is the same on every rank)
            self._shuffle_seed = torch.initial_seed() % 2**62
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = (
            MemberShuffleSampler(dataset, self._shuffle_seed, self.members_per_batch, self.batch_size, num_replicas=replicas, rank=rank)
            if self.members_per_batch > 1
            else EpochShuffleSampler(dataset, self._shuffle_seed, num_replicas=replicas, rank=rank)
        )
        # Lightning sets the epoch again before each epoch; setting it now matters when workers
        # start drawing indices as soon as the loader is iterated
        sampler.set_epoch(trainer.current_epoch if trainer is not None else 0)
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            sampler.resume(epoch, batches * self.batch_size)
            self._resume_at = None
        return sampler

    def count_train_batch(self) -> None:
        """Call once per training batch, when it is used (not when a worker prefetches it)."""
        trainer = self.trainer
        assert trainer is not None, "count_train_batch is called during training, with a trainer attached"
        epoch = trainer.current_epoch
        done = self._position[1] if self._position[0] == epoch else 0
        self._position = (epoch, done + 1)

    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self._position
        return {"shuffle_seed": self._shuffle_seed, "train_epoch": epoch, "train_batches": batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_epoch" not in state_dict:
            return
        self._shuffle_seed = state_dict["shuffle_seed"]
        self._position = (state_dict["train_epoch"], state_dict["train_batches"])
        self._resume_at = self._position
