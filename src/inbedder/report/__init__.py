"""Report stage: every score beside the paper's, a verdict per claim, figures and provenance, as one HTML page.

Reads only the files the rule render_report declares (`inputs.ReportInputs`): `results/<run>/scores.csv`
(+ `skipped.csv`), the training summaries and logs, the run's benchmark files, the cluster explanations,
the data manifests and model fingerprints the run read, the projection task's caches, the config, and the
project's own copy of the paper's numbers (`paper_numbers.csv`, package data). A missing piece is shown as
"not run" with its reason; nothing is ever filled in.

Modules, in the order the page is built: `suites` (what is compared, from the task records
`tasks.<name>.report`; the run key; the score files),
`aggregate` (cells and averages), `claims` (the four decision rules), `tables`, `figures`, `provenance`
(the other inputs and the page's own provenance), `inputs` (the declared files), `render` (the page).
"""

from inbedder.report.aggregate import (
    SuiteScores,
    average_cell,
    column_cells,
    crossview_table,
    headline_runs,
    hmean,
    long_table,
    paper_suite_scores,
    robustness_rows,
    suite_scores,
    train_seed_spread,
)
from inbedder.report.claims import (
    CLAIMS,
    ClaimModes,
    ClaimResult,
    Evidence,
    claim_1,
    claim_2,
    claim_3,
    claim_4,
    claim_modes,
    evaluate_claims,
)
from inbedder.report.figures import Figure, figure_projection
from inbedder.report.inputs import ReportInputs, declared_inputs, run_inputs
from inbedder.report.render import PageData, main, read_page_data, render_report
from inbedder.report.suites import (
    GEN_AVG,
    IA_AVG,
    PAPER_NUMBER_COLUMNS,
    SCORE_COLUMNS,
    Cell,
    Column,
    Run,
    Suite,
    analog_mapping,
    headline_layer,
    load_paper_numbers,
    load_scores,
    load_skipped,
    projection_task,
    suites_of,
)
from inbedder.report.tables import MissingReasons, TableView, filter_ablation, offline_table, paper_table

__all__ = [
    "CLAIMS",
    "GEN_AVG",
    "IA_AVG",
    "PAPER_NUMBER_COLUMNS",
    "SCORE_COLUMNS",
    "Cell",
    "ClaimModes",
    "ClaimResult",
    "Column",
    "Evidence",
    "Figure",
    "MissingReasons",
    "PageData",
    "ReportInputs",
    "Run",
    "Suite",
    "SuiteScores",
    "TableView",
    "analog_mapping",
    "average_cell",
    "claim_1",
    "claim_2",
    "claim_3",
    "claim_4",
    "claim_modes",
    "column_cells",
    "crossview_table",
    "declared_inputs",
    "evaluate_claims",
    "figure_projection",
    "filter_ablation",
    "headline_layer",
    "headline_runs",
    "hmean",
    "load_paper_numbers",
    "load_scores",
    "load_skipped",
    "long_table",
    "main",
    "offline_table",
    "paper_suite_scores",
    "paper_table",
    "projection_task",
    "read_page_data",
    "render_report",
    "robustness_rows",
    "run_inputs",
    "suite_scores",
    "suites_of",
    "train_seed_spread",
]
