"""The reproduction report's analysis, shared by the `report` stage and notebooks/analysis.ipynb.

One direction: stage outputs -> `inputs` (read via `sphereard.layout`) -> the numbers' rules
(`keys`, `compare`, `sweep`) -> text (`tables`, `sections`, `findings`, `caveats`, `definitions`)
and plots (`figures`) -> `build` (report.md + figures, written atomically).

    keys         metric-name conventions of the stage outputs (prefixes, extractor tags, norm keys)
    compare      the comparison rule: compare, trend, tie groups, t-interval half widths
    tables       cell formatting, markdown tables, the per-class and norm-drift tables
    inputs       loading every stage output the report reads (`Inputs`)
    sweep        the sweep's results.csv / summary.csv summarised over seeds, its lines and tables
    figures      the report's overview plots (colours and reference lines: sphereard.eval.figures)
    definitions  the definition of every quantity the report names
    sections     the report's measured sections (run, data, reconstruction, generation, ...)
    findings     "What the numbers show", every comparison decided by `compare`
    caveats      "What they do not show"
    build        report text and `write_report(params, out)`

Nothing here imports `pipelines`; `pipelines/report.py` is the stage's command line.
"""
