"""Drawing only, from arrays already computed: ``style`` (the paper style, colours, markers, atomic saving),
``per_run`` (a run's reliability diagram, uncertainty histograms, the quality-cost figure), ``comparison``
(the panels of the comparison figures, one line per report row)."""
