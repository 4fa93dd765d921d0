"""The page: the sections in order, the stylesheet, and the one self-contained HTML file they make."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryojoint._atomic import atomic_path
from cryojoint.report.loading import RunContents, load_run
from cryojoint.report.markup import _esc
from cryojoint.report.sections import (
    _micrographs_section,
    _pr_section,
    _score_section,
    _summary_section,
    _tables_section,
    _training_section,
)

REPORT_NAME = "report.html"


#: Section id, heading, and the function that renders it (in page order).
SECTIONS: tuple[tuple[str, str, Callable[[RunContents], str]], ...] = (
    ("summary", "Summary", _summary_section),
    ("micrographs", "Micrographs: input, denoised, reference and picks", _micrographs_section),
    ("scores", "Score distribution and cut-off", _score_section),
    ("pr-curves", "Precision-recall curves", _pr_section),
    ("training", "Training", _training_section),
    ("tables", "Tables", _tables_section),
)


CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --line: #dde2e8; --accent: #0b5cad; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; line-height: 1.5; font-size: 15px; }
header { background: #13293d; color: #fff; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .sub { color: #c7d3e0; font-size: 13px; word-break: break-all; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); padding: 8px 32px;
      z-index: 1; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 18px; white-space: nowrap; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 32px 48px; }
section { border-bottom: 1px solid var(--line); padding: 12px 0 24px; }
h2 { font-size: 19px; margin: 16px 0 10px; }
h3 { font-size: 16px; margin: 20px 0 8px; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 16px; }
.card { background: var(--bg); border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px;
        min-width: 130px; }
.card-value { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card-label { font-weight: 600; }
.card-detail { color: var(--muted); font-size: 12px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13.5px; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: 4px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: var(--bg); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; border-top: 2px solid #b8c0ca; }
table.kv th { font-weight: 600; color: var(--muted); white-space: nowrap; }
td.status-ok { color: #16713a; }
td.status-bad { color: #a23b00; }
.missing { background: #fff7e0; border-left: 4px solid #e0a800; padding: 6px 12px; margin: 8px 0; }
.note { color: var(--muted); font-size: 13.5px; }
.warning { background: #fdecea; border-left: 4px solid #c62828; padding: 6px 12px; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 10px; overflow-x: auto; }
details summary { cursor: pointer; color: var(--accent); }
"""


def render_report(contents: RunContents) -> str:
    """The whole HTML page for a loaded run (see :func:`write_report`)."""
    from cryojoint import __version__

    bodies: list[str] = []
    shown: list[tuple[str, str]] = []
    for section_id, heading, render in SECTIONS:
        try:
            body = render(contents)
        except Exception as err:  # noqa: BLE001 - one broken section must not cost the user the whole page
            body = (f'<p class="warning">This section could not be drawn ({_esc(err.__class__.__name__)}: '
                    f"{_esc(err)}). Please report this as a cryojoint bug.</p>")
        if not body:  # a section this kind of folder never fills (a prediction folder's training curves)
            continue
        shown.append((section_id, heading))
        bodies.append(f'<section id="{section_id}"><h2>{_esc(heading)}</h2>{body}</section>')
    notes = "".join(f'<p class="warning">{note}</p>' for note in dict.fromkeys(contents.notes))
    nav = "".join(f'<a href="#{section_id}">{_esc(heading.split(":")[0])}</a>' for section_id, heading in shown)
    title = f"cryojoint report — {contents.run_dir.name or contents.run_dir}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><div class=\"sub\">run folder {_esc(contents.run_dir.resolve())} · "
        f"cryojoint {_esc(__version__)}</div></header><nav>{nav}</nav><main>{notes}{''.join(bodies)}</main>"
        "</body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write one self-contained HTML page describing a run.

    Parameters
    ----------
    run_dir
        Run folder (see the module docstring for what it may hold; everything is optional). A demo folder
        or a ``cryojoint predict`` output folder works too.
    out
        HTML file to write; default ``RUN/report.html``. Written atomically.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    UserInputError
        ``run_dir`` does not exist or holds nothing a report can be made from.

    Examples
    --------
    >>> write_report("runs/demo")  # doctest: +SKIP
    PosixPath('runs/demo/report.html')
    """
    run_dir = Path(run_dir)
    contents = load_run(run_dir)
    out_path = Path(out) if out is not None else run_dir / REPORT_NAME
    page = render_report(contents)
    with atomic_path(out_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_path
