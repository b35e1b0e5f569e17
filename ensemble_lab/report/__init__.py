"""``ensemble-lab report``: mean ± std over seeds of results.json files, as the paper's tables.
``reading`` finds and reads the runs' results.json, ``groups`` groups them into rows, ``significance`` marks each row against a baseline,
``tables`` renders Markdown / LaTeX / CSV / JSON, ``figures`` and ``training_curves`` draw the comparison
figures, ``main`` is the command."""
