"""``ensemble-lab connectivity``: loss and error along straight lines between a run's members.
``barriers`` holds the measurement (interpolated networks, both barriers, the figure), ``command`` the
subcommand (options, loading the run, writing connectivity.json and the figure)."""
