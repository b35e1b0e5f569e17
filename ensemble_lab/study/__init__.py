"""``ensemble-lab study``: a grid of methods × seeds run resumably, then reported. ``spec`` reads the
study file into runs, ``records`` is a run and what it was made with (done, resume, changed), ``args`` the command's options, ``checks`` parses every step's options before anything
runs, ``job`` runs one run (fit + test, connectivity) and records its state, ``status`` prints it,
``launchers`` runs the grid (``sequential``, ``local``, ``slurm``), ``main`` is the command."""
