"""``ensemble-lab report``: mean ± std over seeds of results.json files, as the paper's tables and figures.

``reading`` finds and reads the runs' results.json, ``groups`` groups them into rows, ``columns`` says which metrics each table and preset shows, ``significance`` marks
each row against a baseline; ``layout`` chooses the tables, their columns and each cell's marks, ``tables``
renders Markdown / CSV / JSON and writes the report's files, ``latex`` the LaTeX tables; ``figures`` draws the
comparison figures from the rows of ``figure_rows``, with ``sweeps`` (figures against M and size) and
``training_curves``; ``main`` is the command. Metric facts (direction, labels, figure names) come from
ensemble_lab.metrics.registry."""
