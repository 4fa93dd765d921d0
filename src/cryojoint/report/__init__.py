"""One self-contained HTML page that shows a structural biologist what a run did.

The page is built from whatever the run folder holds; every input is optional and the page says which are
missing:

``config.yaml``, ``metrics.csv``, ``model.pt``
    written by ``cryojoint train`` (the model's ``meta`` says the mode, the particle diameter and whether it
    was estimated, the best step);
``pred/``
    written by ``cryojoint predict``: ``denoised/<name>.mrc``, ``candidates/<name>.csv`` (every NMS peak with
    its score), ``picks.star`` (after the cut-off) and ``predict.json`` (the cut-off and how it was chosen);
``evaluation.json``
    written by :func:`cryojoint.evaluation.evaluate_files` with ``json_path``;
``sources.json``
    written by the demo and the benchmark: where the inputs, the truth and the references are::

        {"data": DIR, "dose": "dose_020", "truth": STAR, "reference": DIR, "clean": DIR, "masks": DIR,
         "test_micrographs": [NAME, ...]}

    The low-dose inputs are ``<data>/<dose>/<name>.mrc``, the full-dose references ``<reference>/<name>.mrc``;
    relative paths are taken relative to the run folder;
``benchmark.json``
    written by the benchmark driver, in this structure (every key optional)::

        {"title": "...",
         "tables": {TITLE: {"columns": [COLUMN, ...], "rows": {METHOD: [VALUE, ...]}, "caption": "..."}},
         "pr_curves": {DOSE: {METHOD: {"precision": [...], "recall": [...], "average_precision": AP}}},
         "notes": ["...", ...]}

    Each row holds one value per column (numbers are shown with 3 decimals, ``null`` as "-"); a row may also
    be a mapping ``{COLUMN: VALUE}``. A curve lists precision and recall at decreasing cut-offs; its AP is
    computed as the step-wise area when not given.

Figures are drawn with matplotlib on the Agg canvas (no pyplot, no global backend change) and embedded as
base64 PNG, so the page has no external resources and can be mailed or archived as one file.

The report computes no metric of its own: it lays out what evaluation stored and calls :mod:`cryojoint.metrics`
where the run's files allow more (the curve over all candidate peaks, which picks match the truth).

Modules: ``loading`` (reading the run folder and what it knows), ``figures`` (matplotlib), ``sections`` (the
HTML of each section), ``page`` (the sections in order, the stylesheet, writing the file), ``markup`` (escaping,
formatting, tables). Names with a leading underscore are private to this package.
"""

from __future__ import annotations

from cryojoint.report.figures import CIRCLE_LINE_WIDTH as CIRCLE_LINE_WIDTH
from cryojoint.report.figures import CIRCLE_RADIUS_PARTICLE_RADII as CIRCLE_RADIUS_PARTICLE_RADII
from cryojoint.report.figures import CONTRAST_PERCENTILES as CONTRAST_PERCENTILES
from cryojoint.report.figures import CURVE_COLOURS as CURVE_COLOURS
from cryojoint.report.figures import FALLBACK_CIRCLE_RADIUS_PX as FALLBACK_CIRCLE_RADIUS_PX
from cryojoint.report.figures import FIGURE_DPI as FIGURE_DPI
from cryojoint.report.figures import HISTOGRAM_BINS as HISTOGRAM_BINS
from cryojoint.report.figures import ISO_F1_LEVELS as ISO_F1_LEVELS
from cryojoint.report.figures import LEARNING_RATE_LABEL as LEARNING_RATE_LABEL
from cryojoint.report.figures import LOG_HISTOGRAM_RANGE as LOG_HISTOGRAM_RANGE
from cryojoint.report.figures import MAX_DISPLAY_PX as MAX_DISPLAY_PX
from cryojoint.report.figures import PALETTE_COLOURS as PALETTE_COLOURS
from cryojoint.report.figures import PANEL_DISPLAY_PX as PANEL_DISPLAY_PX
from cryojoint.report.figures import PICK_STYLES as PICK_STYLES
from cryojoint.report.figures import SMALL_MULTIPLE_COLUMNS as SMALL_MULTIPLE_COLUMNS
from cryojoint.report.figures import TRAINING_LOSS_LABELS as TRAINING_LOSS_LABELS
from cryojoint.report.figures import VALIDATION_LABELS as VALIDATION_LABELS
from cryojoint.report.figures import score_histogram_figure as score_histogram_figure
from cryojoint.report.loading import DEMO_RUN_SUBFOLDER as DEMO_RUN_SUBFOLDER
from cryojoint.report.loading import PRED_SUBFOLDER as PRED_SUBFOLDER
from cryojoint.report.loading import InputStatus as InputStatus
from cryojoint.report.loading import RunContents, load_run
from cryojoint.report.page import CSS as CSS
from cryojoint.report.page import REPORT_NAME, render_report, write_report
from cryojoint.report.page import SECTIONS as SECTIONS
from cryojoint.report.sections import MAX_MICROGRAPHS_SHOWN as MAX_MICROGRAPHS_SHOWN

__all__ = ["REPORT_NAME", "RunContents", "load_run", "render_report", "write_report"]
