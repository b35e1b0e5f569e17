"""EnsembleModule: what every method shares (tiling, training loop, optimizers, evaluation)."""

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from ensemble_lab.compat import attached_trainer
from ensemble_lab.errors import ConfigError
from ensemble_lab.evaluation import UncertaintyEvalMixin
from ensemble_lab.methods.checkpoint_state import CheckpointStateMixin
from ensemble_lab.methods.objectives import DistillationOptions, RepulsionOptions, distillation_from, repulsion_from
from ensemble_lab.methods.task_options import RegressionOptions, build_task, regression_from
from ensemble_lab.methods.training_batch import TrainingBatch
from ensemble_lab.nn import BackboneOptions, LayerFactory, MLPOptions, backbone_from, build_backbone, plain_layers, tile_members
from ensemble_lab.nn.dropout import check_dropout_p
from ensemble_lab.nn.members import check_num_members
from ensemble_lab.nn.memory_format import use_channels_last
from ensemble_lab.runs.legacy_keys import BACKBONE_KEYS, LEGACY_MODEL_KEYS, translate_model_args

#: checkpoint entry holding the training sums of the epoch a checkpoint was written in
EPOCH_SUMS = "ensemble_lab_epoch_sums"


class EnsembleModule(CheckpointStateMixin, UncertaintyEvalMixin, L.LightningModule):
    """Base of every method. ``forward(x)`` returns member logits (M, B, C).

    A subclass says how its members are formed (``layer_factory``) and, if it differs from the
    default, how they are trained (``training_batch``, ``training_loss``, ``logged_loss``,
    ``parameter_groups``).
    """

    #: whether the method's training batch is the test-time tiling (every member the whole batch), so that
    #: ``--data.train_batch independent`` can give each member its own rows instead; False for a method that
    #: draws its own training rows (MIMO) or trains one sample (MC Dropout)
    tiles_training_batch: bool = True
    #: set when fit starts: the datamodule serves independent batches, M·B rows member-major
    _independent_batches: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The two hooks training_batch replaced: a subclass that still defines them would be silently ignored.
        stale = [name for name in ("training_logits", "training_targets") if name in vars(cls)]
        if stale:
            raise TypeError(
                f"{cls.__name__} defines {' and '.join(stale)}, which ensemble-lab no longer calls: override "
                "training_batch(x, y) -> TrainingBatch(logits, targets, rows) instead"
            )

    def __init__(
        self,
        num_members: int = 4,
        backbone: BackboneOptions | str = lazy_instance(MLPOptions),
        dropout: float = 0.0,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 8, 8),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        channels_last: bool = False,
        compile: bool = False,
        distillation: DistillationOptions | None = None,
        repulsion: RepulsionOptions | None = None,
        task: Literal["classification", "regression"] = "classification",
        regression: RegressionOptions | None = None,
        **legacy_options: Any,
    ) -> None:
        """
        Mixed precision is a trainer option: ``--trainer.precision bf16-mixed`` (CPU and GPU).

        Args:
            num_members: number of ensemble members M (MC Dropout: number of test-time samples).
            backbone: the network architecture and its own options: ``mlp`` (MLPOptions: hidden_sizes),
                ``resnet18`` (ResNet18Options: width), ``wide_resnet`` (WideResNetOptions: depth, widen_factor) or
                ``vit`` (ViTOptions: patch_size, embed_dim, depth, num_heads, mlp_ratio, pooling, attention_dropout),
                e.g. ``--model.backbone resnet18 --model.backbone.width 32``; default: mlp with hidden sizes 64, 32, 16.
            dropout: dropout probability in the backbone, in [0, 1); 0 builds no dropout layers.
            num_classes: number of classes, or for regression number of targets D (the head then has 2·D
                outputs: a mean and a variance per target); linked from the datamodule by the CLI.
            input_shape: shape of one input image (C, H, W); linked from the datamodule by the CLI.
            optimizer: optimizer class and its options, e.g. ``--model.optimizer SGD --model.optimizer.lr 0.05``.
            lr_scheduler: optional learning-rate scheduler, stepped once per epoch.
            channels_last: keep 4-D conv weights and 4-D input batches in channels-last (NHWC) memory
                order, which GPU convolutions prefer under bf16 / fp16. Values do not change.
                DeepEnsemble's grouped layers work in NCHW whatever this says.
            compile: compile the network with torch.compile on its first call (a slow first step,
                then faster steps, mostly on GPUs). Parameter names and checkpoints are unchanged.
            distillation: distil from a trained teacher (``--model.distillation.teacher <run>/checkpoints/last.ckpt``,
                ``.temperature``, ``.alpha``, ``.match``); None: no distillation.
            repulsion: push members apart in function space (``--model.repulsion.strength 0.1``, ``.bandwidth``);
                None: off.
            task: "classification" (members output class logits) or "regression" (a Gaussian per target);
                linked from the datamodule's ``task`` by the CLI.
            regression: the regression head and loss (``--model.regression.head softplus|log_variance``,
                ``.loss nll|beta_nll|mse``, ``.beta``); read only for regression.
            legacy_options: options of the old flat spelling (``hidden_sizes``, ``teacher``, ``repulsion`` as a
                number, ...), as Python code and checkpoints written before options had their objects give them;
                translated to the new ones.
        """
        super().__init__()
        if legacy_options or isinstance(backbone, str) or isinstance(repulsion, (int, float)):
            backbone, distillation, repulsion = self._translate_legacy(backbone, distillation, repulsion, legacy_options)
        check_num_members(num_members)
        check_dropout_p(dropout, "model.dropout")
        self.backbone = backbone_from(backbone)
        options = self.backbone.options()
        self.distillation_options, self.repulsion_options = distillation_from(distillation), repulsion_from(repulsion)
        if self.repulsion_options is not None:
            self.repulsion_options.check_members(num_members)
        self.regression_options = regression_from(regression)
        self.task = build_task(task, self.regression_options)
        if not self.task.has_classes and (self.distillation_options is not None or self.repulsion_options is not None):
            name = "--model.distillation" if self.distillation_options is not None else "--model.repulsion"
            raise ConfigError(f"{name} is classification-only (it compares class probabilities); drop it for a {self.task.name} dataset")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "legacy_options"])
        # checkpoints record plain values (weights_only loading reads them): the backbone built, the objectives' options
        for old in set(LEGACY_MODEL_KEYS) - {"repulsion"}:  # a subclass's **kwargs passed old names on: not recorded
            self.hparams.pop(old, None)
        self.hparams.update(
            backbone=self.backbone.record(),
            distillation=None if self.distillation_options is None else self.distillation_options.record(),
            repulsion=None if self.repulsion_options is None else self.repulsion_options.record(),
            regression=self.regression_options.record(),
        )
        self.num_members = num_members
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        outputs = self.task.output_size(num_classes)  # K: C logits, or a mean and a variance per target (2·D)
        self.network = self.build_network(self.backbone.name, tuple(input_shape), outputs, dropout, options)
        if channels_last:
            use_channels_last(self.network)
        if compile:
            self.network.compile()  # in place: state_dict keys stay "network.*"
        # a plain object, not a submodule: the teacher is in no state_dict, optimizer or train() switch of the student
        self.distillation = None if self.distillation_options is None else self.distillation_options.build()

    def _translate_legacy(self, backbone: Any, distillation: Any, repulsion: Any, legacy: dict[str, Any]) -> tuple[Any, Any, Any]:
        """The new options from old flat ones (and a short backbone name): the translation config files and
        checkpoints go through (``ensemble_lab.runs.legacy_keys``)."""
        if isinstance(backbone, BackboneOptions) and any(key in legacy for key in BACKBONE_KEYS):
            backbone = backbone.name  # the default object, with old flat options given beside it
        given = {**legacy, "backbone": backbone, "repulsion": repulsion}
        if distillation is not None:
            given["distillation"] = distillation
        new, _ = translate_model_args(given, strict=True)
        unknown = sorted(set(new) - {"backbone", "distillation", "repulsion"})
        if unknown:
            raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {unknown[0]!r}")
        return new["backbone"], new.get("distillation"), new["repulsion"]

    def build_network(
        self, backbone: str, input_shape: tuple[int, ...], num_classes: int, dropout: float, options: dict[str, Any]
    ) -> nn.Module:
        """The network on member-major rows: backbone ``backbone`` built from ``layer_factory()``.

        A method whose network is not the backbone as given overrides this (e.g. narrower members, or
        M inputs stacked along channels); ``options`` are the backbone's own, defaults filled in.
        """
        return build_backbone(backbone, self.layer_factory(), input_shape, num_classes, dropout=dropout, **options)

    def layer_factory(self) -> LayerFactory:
        """The layers this method builds its backbone from."""
        raise NotImplementedError

    def member_backbone_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The backbone options of one member's own network, given the ensemble's (``options``,
        defaults filled in); the same by default. A method whose members are narrower overrides this."""
        return options

    def member_layer_factory(self) -> LayerFactory:
        """The plain layers one member's own network is built from: the single model's by default."""
        return plain_layers()

    def member_network(self) -> nn.Module:
        """One member as a plain network (``member_layer_factory``, no dropout), on the CPU: the network
        whose tensors a layer's ``member_state(i)`` gives for member i (used by ``connectivity``)."""
        shape, classes = tuple(self.hparams["input_shape"]), self.task.output_size(self.hparams["num_classes"])
        options = self.member_backbone_options(self.backbone.options())
        return build_backbone(self.backbone.name, self.member_layer_factory(), shape, classes, dropout=0.0, **options)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, ...) -> member logits (M, B, C); the batch is tiled member-major inside."""
        batch = x.shape[0]
        logits = self.network(tile_members(x, self.num_members))  # (M*B, C)
        return logits.view(self.num_members, batch, -1)  # (M, B, C)

    # ---- training --------------------------------------------------------------------------------
    def training_batch(self, x: Tensor, y: Tensor) -> TrainingBatch:
        """The members' training logits on the batch ``x`` (B, ...), their labels and which image each row is.

        The default trains every member on the whole batch, as at test time: logits (M, B, C), labels and
        rows (B,). A method whose members train on their own rows returns (M, N) labels and rows. With
        ``--data.train_batch independent`` the batch holds M·B rows, member-major: member m trains on its own
        rows [m·B, (m+1)·B), so labels and rows are (M, B).
        """
        if self._independent_batches:
            m = self.num_members
            count = x.shape[0] // m  # rows per member (the loader serves M·b rows)
            rows = torch.arange(m * count, device=x.device).view(m, count)  # (M, B): member m's own rows
            logits = self.network(x[: m * count]).view(m, count, -1)  # (M·B, K) -> (M, B, K)
            return TrainingBatch(logits, y[rows], rows)
        return TrainingBatch(self(x), y, torch.arange(x.shape[0], device=x.device))

    def training_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The task's loss averaged over members and rows, ``targets`` as ``training_batch`` returns them:
        classification, cross-entropy with labels (N,) or (M, N); regression, the Gaussian NLL by default with
        targets (N, D) or (M, N, D)."""
        return self.task.loss(logits, targets)

    def logged_loss(self, loss: Tensor, logits: Tensor) -> Tensor:
        """The training loss as logged (train/loss_step, train/loss_epoch); the default is ``loss`` itself.

        A method whose ``training_loss`` is not a mean over members (DeepEnsemble sums them) returns
        the mean member loss here, so curves compare across methods. Stays on the device (no sync).
        """
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        step = self.training_batch(batch[0], batch[1])
        logits, targets = step.logits, step.targets  # (M, N, C); (N,), or (M, N) when each member has its own rows
        loss = self.training_loss(logits, targets)
        if self.distillation is not None:  # α · loss + (1 − α) · T² · KL(teacher_T ‖ student_T)
            loss = self.distillation.loss(self, batch[0], step, loss)
        if self.repulsion_options is not None and self.repulsion_options.strength:  # + λ · mean RBF kernel between members' probabilities
            loss, kernel = self.repulsion_options.add(type(self).__name__, logits, targets, loss)
            self.log("train/repulsion", kernel.detach(), on_step=True, on_epoch=False)
        logged = self.logged_loss(loss.detach(), logits.detach())
        # Nothing here waits for the device. Epoch sums stay on the device and are logged once per
        # epoch (each self.log costs ~0.5 ms of CPU); the step loss (this rank's, no collective)
        # reaches the logger every log_every_n_steps and never the progress bar.
        with torch.no_grad():
            correct = self.task.correct(logits, targets)  # None for a task without an accuracy (regression)
            if self._epoch_sums is None:
                self._epoch_sums = torch.zeros(3, device=loss.device)  # loss × images, correct, images
            elif self._epoch_sums.device != loss.device:  # restored from a checkpoint before the model reached its device
                self._epoch_sums = self._epoch_sums.to(loss.device)
            images = logits.shape[1]  # rows each member trained on
            self._epoch_sums[0] += logged.float() * images
            if correct is not None:
                self._epoch_sums[1] += correct
            self._epoch_sums[2] += images
        self.log("train/loss_step", logged, on_step=True, on_epoch=False)
        return loss

    #: this epoch's training sums on the device: loss × images, correct predictions, images
    _epoch_sums: Tensor | None = None

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.distillation is not None:  # read and checked before the first step (a resume reads it again)
            self.distillation.load(self)

    def setup(self, stage: str) -> None:
        """A regression model learns the datamodule's target scaling, so predictions are stored in its units."""
        super().setup(stage)
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        mean, std = getattr(datamodule, "target_mean", None), getattr(datamodule, "target_std", None)
        if mean is not None:  # a classifier's task stays as it is
            self.task = self.task.with_target_scaling(mean, std)
        if stage == "fit" and getattr(datamodule, "train_batch", "shared") == "independent":
            if not self.tiles_training_batch or getattr(self, "train_batch", "tile") != "tile":
                raise ConfigError(f"--data.train_batch independent gives tiled members their own rows; {type(self).__name__} chooses its own training rows: drop one of them")
            datamodule.members_per_batch = self.num_members  # type: ignore[union-attr]  # the loader then serves M·B rows
            self._independent_batches = True

    def on_train_epoch_start(self) -> None:
        self._epoch_sums = None  # not called for the epoch a mid-epoch resume continues: its sums come from the checkpoint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._epoch_sums is not None:
            checkpoint[EPOCH_SUMS] = self._epoch_sums.detach().cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # A run resumed inside an epoch counts that epoch's batches from before the interruption too
        # (after an epoch-end checkpoint, the next epoch's on_train_epoch_start starts afresh). Under
        # DDP the checkpoint holds rank 0's sums only: the resumed epoch then averages its later batches.
        saved = checkpoint.get(EPOCH_SUMS)
        trainer = attached_trainer(self)
        single_process = trainer is None or trainer.world_size == 1
        self._epoch_sums = saved.to(self.device) if saved is not None and single_process else None

    def on_train_epoch_end(self) -> None:
        if self._epoch_sums is None:
            return
        loss_sum, correct, images = self.trainer.strategy.reduce(self._epoch_sums, reduce_op="sum")  # over DDP ranks
        logged = {"train/loss_epoch": loss_sum / images}
        if self.task.has_classes:  # a task without classes has no accuracy
            logged["train/acc"] = correct / images
        self.log_dict(logged, sync_dist=False)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The member predictions that predict writes: a classifier's probabilities (M, B, C), a regression model's
        means and variances side by side (M, B, 2·D) in the targets' units (the task's evaluation says which)."""
        return self.evaluation.predict_batch(self, batch)

    # ---- optimisation -----------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups given to the optimizer (one group by default)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def adjust_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Hook to change per-group options after the optimizer was built (before the scheduler)."""

    def configure_optimizers(self) -> Any:
        try:  # torch checks the values (a negative lr, betas outside [0, 1), ...) when they are built
            optimizer = self.optimizer(self.parameter_groups())
        except (ValueError, TypeError) as error:
            raise ConfigError(f"--model.optimizer: {error}") from error
        self.adjust_optimizer(optimizer)
        if self.lr_scheduler is None:
            return optimizer
        try:
            scheduler = self.lr_scheduler(optimizer)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"--model.lr_scheduler: {error}") from error
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
