"""`tally schemas ...` and `tally catalog ...` commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

EVENTS_MD = Path(__file__).resolve().parent.parent / "docs" / "events.md"


@click.group()
def schemas() -> None:
    """Avro schemas (schemas/avro/)."""


@schemas.command("check")
@click.option("--dir", "schema_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              default=None, help="Schema folder (default: the repo's schemas/avro).")
def schemas_check(schema_dir: Path | None) -> None:
    """Check docs, namespaces, kept versions, and FULL compatibility of consecutive versions.

    Compatibility is proven by real Avro resolution of sample records in both
    directions. Exits 1 and names the offending field when a rule is broken.
    """
    from tally.schemas import compat
    from tally.schemas.codec import SCHEMA_DIR, load_versions

    folder = schema_dir or SCHEMA_DIR
    proven, problems = compat.check(folder)
    if not problems:
        for name, vs in sorted(load_versions(folder).items()):
            pairs = [p for p in proven if p.schema == name]
            detail = ", ".join(f"v{p.old}->v{p.new} FULL ({p.samples} samples each way)" for p in pairs)
            click.echo(f"ok {name}: {len(vs)} version(s)" + (f"; {detail}" if detail else ""))
        return
    for p in problems:
        click.echo(f"FAIL {p}", err=True)
    sys.exit(1)


@click.group()
def catalog() -> None:
    """The product event catalog (schemas/catalog.py)."""


@catalog.command("docs")
@click.option("--output", type=click.Path(path_type=Path), default=EVENTS_MD, show_default=True)
def catalog_docs(output: Path) -> None:
    """Regenerate docs/events.md from the catalog."""
    from tally.schemas.catalog import events_markdown

    output.write_text(events_markdown())
    click.echo(f"wrote {output}")


@catalog.command("list")
def catalog_list() -> None:
    """Print every event with its feature area."""
    from tally.schemas.catalog import CATALOG

    for name, e in CATALOG.items():
        click.echo(f"{name}\t{e.feature_area}")


@catalog.command("lint")
def catalog_lint() -> None:
    """Check the catalog's rules and docs/events.md; exit 1 on an error (warnings: exit 0)."""
    from datetime import UTC, datetime

    from tally.schemas.catalog import CATALOG, Finding, events_markdown, lint

    findings = lint(datetime.now(UTC).date())
    if not EVENTS_MD.exists() or EVENTS_MD.read_text() != events_markdown():
        findings.append(Finding("error", "", "docs/events.md is stale: run `tally catalog docs`"))
    for f in findings:
        click.echo(f"{f.level}: {f.event + ': ' if f.event else ''}{f.message}", err=f.level == "error")
    errors = sum(f.level == "error" for f in findings)
    click.echo(f"{len(CATALOG)} events; {errors} error(s), {len(findings) - errors} warning(s)")
    if errors:
        sys.exit(1)

