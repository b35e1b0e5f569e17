"""A run directory and what is written into it: ``layout`` (where things are), ``results`` (results.json:
writing, reading back, the overwrite check), ``checkpoint_files`` (reading a .ckpt with one-line errors),
``checkpoints`` (which checkpoint a run tests: last or best), ``resume`` (continuing an interrupted fit
and the config.yaml it keeps), ``callbacks`` (last checkpoint, non-finite loss guard, optional early
stopping), ``metrics_csv`` (metrics.csv), ``interrupts`` (Ctrl-C / SIGTERM ending a run cleanly), ``legacy_keys`` (option names of earlier
releases in flags, configs, checkpoints and records, translated to today's in one place)."""
