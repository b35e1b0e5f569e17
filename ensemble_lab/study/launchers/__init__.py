"""How ``ensemble-lab study`` runs its runs: ``sequential`` (one after the other in the study's process),
``local`` (N at a time, each ``python -m ensemble_lab.study.job`` in its own process) or ``slurm`` (job
arrays through submitit)."""
