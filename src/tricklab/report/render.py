"""Re-render a lab's report from its database: the workflow behind ``tricklab report`` and ``tricklab.report``.

``report.html`` and ``plots/`` are written into the lab folder, or into ``out`` so that a read-only lab folder (a
published one) is rendered elsewhere; the database is only ever read. ``markdown`` also writes the findings as
GitHub-flavoured Markdown (:mod:`tricklab.report.markdown`), its plots in ``<stem>-plots/`` beside it. No output
replaces a file tricklab did not write (:mod:`tricklab.outputs`) unless ``force`` is given, and never a link, a
folder, a device or the lab's database. The folder written is locked while it is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tricklab.errors import TrickLabError
from tricklab.outputs import is_folder

DEFAULT_MARKDOWN = "results.md"  # inside the report's folder (the lab folder, or out)


@dataclass(frozen=True)
class Names:
    """How a face names the lab folder and the output folder in its messages."""

    lab_dir: str = "DIR"
    out: str = "--out"
    elsewhere: str = "with --out DIR (e.g. tricklab report {lab} --out {name}-report)"


def render_lab(
    lab_dir: Path,
    out: Path | None = None,
    markdown: Path | bool | None = None,
    *,
    force: bool = False,
    console=None,
    names: Names = Names(),
) -> tuple[Path, Path | None]:
    """Write the lab's report (and with ``markdown``, a path or True for ``results.md`` beside the report, its
    findings); return the report's and the Markdown's paths."""
    from contextlib import ExitStack

    from tricklab.locks import check_free, folder_lock
    from tricklab.report.lab_report import DB_NAME, build_report, db_files

    if not is_folder(lab_dir, names.lab_dir):
        raise TrickLabError(f"{str(lab_dir)!r} holds no lab results ({DB_NAME} not found); run `tricklab lab` first")
    out_dir = out if out is not None else lab_dir
    if out is not None:
        is_folder(out_dir, names.out)
    elif not os.access(lab_dir, os.W_OK):
        elsewhere = names.elsewhere.format(lab=lab_dir, name=lab_dir.name)
        raise TrickLabError(f"{lab_dir}: the lab folder is read-only; render its report elsewhere {elsewhere}")
    md = None
    if markdown is not None and markdown is not False:
        from tricklab.report.markdown import build_markdown, check_target

        md = out_dir / DEFAULT_MARKDOWN if markdown is True else Path(markdown)
        own = [out_dir / "report.html", *db_files(lab_dir)]
        check_target(md, force=force, inputs=own)  # before any work
    with ExitStack() as stack:
        check_free(lab_dir)  # a lab at work in the folder is named; the lock is taken where the report is written
        label = f"{names.out} {str(out_dir)!r}" if out is not None else ""
        stack.enter_context(folder_lock(out_dir, create=True, label=label))
        path = build_report(lab_dir, console=console, out_dir=out_dir, force=force)
        if md is not None:
            md = build_markdown(lab_dir, md, force=force, inputs=[path])
    return path, md
