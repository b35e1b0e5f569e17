"""``ensemble-lab connectivity``: loss and error along straight lines between a run's members, and on planes.
``barriers`` holds the measurement (interpolated networks, both barriers, the figure), ``permutations`` and
``alignment`` weight matching (a network's permutation groups, read from its dataflow, and the matching),
``plane`` the loss plane through three members, ``loading`` reading a run, ``command`` the subcommand
(options, writing connectivity.json and the figures)."""
