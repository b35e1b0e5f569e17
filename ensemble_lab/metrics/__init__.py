"""Pure math on member outputs and weights, no Lightning, and the one registry of metric facts.

``registry`` holds every metric's facts (task, direction, needs labels / an OOD set, figure label), read by
the report, the checkpoint monitors, the significance tests and the figures; ``classification`` (accuracy,
NLL, Brier, ECE, reliability bins, entropy / mutual information, disagreement), ``ood`` (AUROC, AUPR, FPR95
of an uncertainty score), ``calibration`` (temperature scaling), ``weight_space`` (members' weight cosine),
``cost`` and ``tensor_memory`` (parameters, FLOPs, images per second, peak tensor memory), ``significance``
(Welch's test over seeds, paired bootstrap over test samples, Holm's correction)."""
