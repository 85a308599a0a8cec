"""Looking around: ``taxonomies``, ``taxonomies show``, ``plugins``, ``settings``."""

from __future__ import annotations

import json

import click

from ..settings import Settings
from .common import cli, print_table, reports_errors


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_context
@reports_errors
def taxonomies(ctx, as_json):
    """List registered taxonomies (name, mode, labels, plugin); broken taxonomy files as invalid, with their errors."""
    if ctx.invoked_subcommand is not None:
        return
    from ..registry import invalid_taxonomies, registered_taxonomies

    rows = [
        {"name": name, "status": "ok", "mode": e.taxonomy.mode, "labels": len(e.taxonomy.labels), "plugin": e.origin,
         "version": e.taxonomy.version, "fingerprint": e.taxonomy.fingerprint, "error": None}
        for name, e in sorted(registered_taxonomies().items())
    ]
    invalid = sorted(invalid_taxonomies(), key=lambda broken: (broken.name, broken.source))
    rows += [{"name": b.name, "status": "invalid", "mode": None, "labels": None, "plugin": b.origin, "version": None,
              "fingerprint": None, "error": b.error} for b in invalid]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table([{**row, "mode": row["mode"] or "INVALID", "labels": "-" if row["labels"] is None else row["labels"]}
                 for row in rows], ["name", "mode", "labels", "plugin"])
    for broken in invalid:
        click.echo(f"invalid {broken.name}: {broken.error}".replace("\n", "; "))


@taxonomies.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the validated spec as JSON.")
@reports_errors
def taxonomies_show(name, as_json):
    """Show one taxonomy's spec."""
    from ..registry import get_taxonomy

    spec = get_taxonomy(name)
    if as_json:
        click.echo(spec.model_dump_json(indent=2))
        return
    click.echo(f"{spec.name} v{spec.version} ({spec.mode}-label, fingerprint {spec.fingerprint})")
    if spec.description:
        click.echo(f"  {spec.description}")
    click.echo("templates: " + " | ".join(spec.templates))
    rows = [
        {"label": label.name, "parent": label.parent or "", "threshold": f"{spec.threshold_of(label):.2f}",
         "action": label.action or "", "background": "yes" if label.background else ""}
        for label in spec.labels
    ]
    print_table(rows, ["label", "parent", "threshold", "action", "background"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@reports_errors
def plugins(as_json):
    """List loaded plugins and the hooks each implements."""
    from ..plugins import plugin_hooks

    rows = plugin_hooks()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table([dict(r, hooks=", ".join(r["hooks"]), builtin="yes" if r["builtin"] else "") for r in rows],
                ["name", "hooks", "builtin"])


@cli.command("settings")
@reports_errors
def show_settings():
    """Print the configuration in effect (from ZSTAGGER_* variables and defaults) as JSON."""
    click.echo(Settings().model_dump_json(indent=2))

