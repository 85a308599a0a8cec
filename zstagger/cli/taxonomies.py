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
    if spec.facets:
        click.echo("facets:")
        print_table([{"facet": f.name, "values": ", ".join(v.name for v in f.values), "threshold": f"{f.threshold:.2f}",
                      "applies to": ", ".join(f.applies_to) or "every image"} for f in spec.facets],
                    ["facet", "values", "threshold", "applies to"])
    if spec.descent is not None:
        click.echo(f"descent: scoring {spec.descent.scoring}, stop {spec.descent.stop:g}")


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



@taxonomies.command("import-shopify")
@click.argument("dist_dir", type=click.Path(file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The taxonomy file to write (.yaml or .json); its licence notice goes beside it (.LICENSE.txt).")
@click.option("--name", default="shopify", show_default=True, help="The generated taxonomy's name.")
@click.option("--stop", type=click.FloatRange(0.0, 1.0), default=None,
              help="Confidence stop of the descent (default 0.3): an image stops at the deepest level whose best "
                   "category has at least this share among its siblings.")
@click.option("--google-mapping", type=click.Path(dir_okay=False),
              help="The Shopify-to-Google mapping JSON (default: integrations/google/ for the categories' version).")
@click.option("--license", "licence", type=click.Path(dir_okay=False),
              help="Shopify's LICENSE file (default: found beside DIST_DIR or up to three directories above).")
@reports_errors
def taxonomies_import_shopify(dist_dir, out, name, stop, google_mapping, licence):
    """Generate a taxonomy from Shopify's Standard Product Taxonomy (the dist/en directory of
    github.com/Shopify/product-taxonomy): categories as a hierarchy, attributes as facets, Shopify and
    Google IDs in results. Prints a JSON summary; progress on stderr."""
    from pathlib import Path

    from ..errors import ConfigurationError
    from ..product_taxonomy import DEFAULT_STOP, attribution, read_dist, shopify_spec

    def say(message: str) -> None:
        click.echo(message, err=True)

    say(f"reading {dist_dir}")
    dist = read_dist(dist_dir, google_mapping, licence)
    if dist.google is None:
        say("no Google mapping for this version under integrations/google/: results will carry no Google IDs "
            "(give one with --google-mapping FILE)")
    spec = shopify_spec(dist, name=name, stop=DEFAULT_STOP if stop is None else stop, progress=say)
    target = Path(out)
    if target.suffix.lower() == ".json":
        text = json.dumps(spec, ensure_ascii=False, indent=1)
    else:
        import yaml

        text = yaml.dump(spec, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False, allow_unicode=True,
                         width=1000)
    notice = target.with_name(target.stem + ".LICENSE.txt")
    try:
        target.write_text(text, encoding="utf-8")
        notice.write_text(attribution(dist), encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {exc.filename}: {exc.strerror}") from None
    say(f"wrote {target} and {notice}")
    source = spec["source"]
    click.echo(json.dumps({"taxonomy": name, "file": str(target), "licence_file": str(notice), "version": source["version"],
                           "categories": len(spec["labels"]), "attributes": int(source["attributes"]),
                           "facets": len(spec["facets"]),
                           "google_ids": sum("google_id" in meta for meta in spec["metadata"].values())}))
