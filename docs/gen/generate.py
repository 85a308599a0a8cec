"""Regenerate the docs pages that are derived from the code, never written by hand.

    python docs/gen/generate.py          # rewrite them
    python docs/gen/generate.py --check  # exit 1 naming every page that is out of date

- ``docs/cli.md``: every command's and subcommand's ``--help``, from the click group
  (built-in commands only: plugins' commands are not part of zstagger's reference).
- ``docs/configuration.md``: the settings table between its ``generated`` markers, from the
  fields of :class:`zstagger.settings.Settings` (default, the processes that read the setting
  from its ``read_by`` metadata, description).
- ``docs/index.md``: the docs site's home page, README.md with its links rewritten for the
  site (``docs/x.md`` -> ``x.md``; other files of the repository become their path as code).

tests/test_docs.py fails when a page differs from what this script writes.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
COMMAND = "python docs/gen/generate.py"
BEGIN = f"<!-- generated: the settings table; edit zstagger/settings.py, then run `{COMMAND}` -->"
END = "<!-- end of generated table -->"
HELP_WIDTH = 100

# Help text and defaults must not depend on the shell that runs this.
for _key in [k for k in os.environ if k.startswith("ZSTAGGER_")]:
    del os.environ[_key]


def cli_reference() -> str:
    import click

    from zstagger.cli import cli

    sections = []

    def walk(command: click.Command, path: list[str], parent: click.Context | None) -> None:
        # As click.Command.make_context builds it (the command's own context settings), at a fixed width.
        settings = {**command.context_settings, "terminal_width": HELP_WIDTH, "max_content_width": HELP_WIDTH}
        ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
        sections.append(f"## `{' '.join(path)}`\n\n```text\n{command.get_help(ctx).rstrip()}\n```\n")
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name], ctx)

    walk(cli, ["zstagger"], None)
    return (
        "# CLI reference\n\n"
        f"<!-- generated from every command's --help by `{COMMAND}`: do not edit by hand -->\n\n"
        "Every `zstagger` command and subcommand, as its `--help` prints it. Exit statuses are the\n"
        "same everywhere: 0 done, 1 some inputs failed (their error records are printed), 2 usage\n"
        "or configuration error, 3 a job not finished (`results`), 130 interrupted, 141 stdout\n"
        "closed early. Settings (`ZSTAGGER_*`) are on the [configuration page](configuration.md).\n\n"
        + "\n".join(sections)
    )


def _default_text(name: str, field) -> str:
    extra = field.json_schema_extra or {}
    if "default_text" in extra:
        return extra["default_text"]
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is None or value == "" or value == []:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if name.endswith("_bytes") and isinstance(value, int) and value >= 1024:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{text} ({value // size} {unit})"
    return text


class MissingReadBy(ValueError):
    pass


def settings_table() -> str:
    from zstagger.settings import API_SERVER, CLI, PRODUCER, WORKER, Settings

    PROCESS_ORDER = [CLI, WORKER, API_SERVER, PRODUCER]

    rows = ["| Setting | Default | Read by | Meaning |", "| --- | --- | --- | --- |"]
    missing = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra or {}
        if not extra.get("read_by"):
            missing.append(name)
            continue
        default = _default_text(name, field)
        description = (field.description or "").replace("|", "\\|")
        readers = sorted(extra["read_by"], key=lambda p: PROCESS_ORDER.index(p) if p in PROCESS_ORDER else len(PROCESS_ORDER))
        rows.append(f"| `ZSTAGGER_{name.upper()}` | {f'`{default}`' if default else ''} | "
                    f"{', '.join(readers)} | {description} |")
    if missing:
        raise MissingReadBy(
            f"settings without read_by metadata: {', '.join(missing)}. In zstagger/settings.py give each "
            "Field json_schema_extra=read_by(...) naming the processes that read it, then run " + COMMAND)
    return "\n".join(rows) + "\n"


def configuration_page(current: str) -> str:
    if BEGIN not in current or END not in current:
        raise ValueError(f"docs/configuration.md lost its markers; the table goes between\n{BEGIN}\nand\n{END}")
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{settings_table()}\n{END}{tail}"


_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def index_page(readme: str) -> str:
    def rewrite(match: re.Match) -> str:
        text, target = match.groups()
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        if target.startswith("docs/"):
            return f"[{text}]({target[len('docs/'):]})"
        path = target.split("#")[0]
        return text if text.strip("`") == path else f"{text} (`{path}` in the repository)"

    body = _LINK.sub(rewrite, readme)
    return f"<!-- generated from README.md by `{COMMAND}`: edit README.md instead -->\n\n{body}"


def pages() -> dict[Path, str]:
    """Every generated page and the text it should have."""
    return {
        DOCS / "cli.md": cli_reference(),
        DOCS / "configuration.md": configuration_page((DOCS / "configuration.md").read_text()),
        DOCS / "index.md": index_page((ROOT / "README.md").read_text()),
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, text in pages().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path.relative_to(ROOT).as_posix())
            if not check:
                path.write_text(text)
    if check and stale:
        print(f"out of date: {', '.join(stale)}; run {COMMAND}", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
