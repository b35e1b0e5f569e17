"""The methods: the paper's four and the other efficient ensembles. Each is a LightningModule with
``num_members`` and ``forward(x) -> (M, B, C)``. ``base`` holds EnsembleModule (training, options, the
evaluation mixin), one file per method (``snapshot``: snapshot and checkpoint ensembles), ``assemble`` (a Deep Ensemble from SingleModel checkpoints),
``checkpoint_state`` (what a checkpoint carries besides the weights), ``distillation`` and ``repulsion``
(optional training objectives) with their options objects in ``objectives``, ``training_batch`` (what a method trains on)."""

from ensemble_lab.methods.base import EnsembleModule
from ensemble_lab.methods.batch_ensemble import BatchEnsemble
from ensemble_lab.methods.deep_ensemble import DeepEnsemble
from ensemble_lab.methods.low_rank import LowRankEnsemble
from ensemble_lab.methods.masksembles import Masksembles
from ensemble_lab.methods.mc_dropout import MCDropout
from ensemble_lab.methods.mimo import MIMO
from ensemble_lab.methods.objectives import DistillationOptions, RepulsionOptions
from ensemble_lab.methods.packed import PackedEnsemble
from ensemble_lab.methods.single import SingleModel
from ensemble_lab.methods.snapshot import SnapshotEnsemble
from ensemble_lab.methods.training_batch import TrainingBatch

__all__ = ["BatchEnsemble", "DeepEnsemble", "DistillationOptions", "EnsembleModule", "LowRankEnsemble", "Masksembles", "MCDropout", "MIMO", "PackedEnsemble", "RepulsionOptions", "SingleModel", "SnapshotEnsemble", "TrainingBatch"]
