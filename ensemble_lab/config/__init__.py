"""How a run is configured: ``lightning_cli`` (the LightningCLI subclass behind ``fit`` / ``validate`` /
``test`` / ``predict``), ``options`` (the options it adds), ``checks`` (config files and warnings, before
anything is built), ``outputs`` (a test's EvaluationOutputs from the command's options), ``parser_errors``
(one line for a bad option), ``run_config`` (a run's resolved configuration, flattened and compared),
``failures`` (which errors are the user's), ``training_length`` (``--max_epochs`` / ``--max_steps`` checks),
``legacy`` (old flags and config keys read in today's spelling)."""
