"""One table of user-facing errors: every error zstagger raises has a stable type with a row
that says its exit code, HTTP answer and error-record type, and the CLI and the service
answer from that row."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import zstagger
from zstagger import errors
from zstagger.errors import ERRORS, ZstaggerError, exit_code, http_answer, record_type

PACKAGE = Path(zstagger.__file__).parent


def all_error_classes() -> list[type]:
    for info in pkgutil.walk_packages(zstagger.__path__, "zstagger."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found, todo = [], [ZstaggerError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__.startswith("zstagger.")]


def raised_error_names() -> dict[str, list[str]]:
    """Class names in ``raise X(...)`` / ``raise module.X(...)`` statements, with where they are."""
    raised: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
                if name:
                    raised.setdefault(name, []).append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return raised


def test_every_error_raised_anywhere_has_its_own_row_in_the_table():
    classes = {cls.__name__: cls for cls in all_error_classes()}
    raised = {name: where for name, where in raised_error_names().items() if name in classes}
    assert {"ConfigurationError", "ImageLoadError", "UnknownJobError", "JobTimeout"} <= set(raised)  # the scan sees them
    missing = [f"{name} (raised at {where[0]})" for name, where in sorted(raised.items())
               if classes[name].__dict__.get("type") not in ERRORS]
    assert not missing, "errors raised without their own `type` row in zstagger.errors.ERRORS: " + ", ".join(missing)


def test_every_error_class_has_a_type_of_its_own_and_every_row_a_class():
    classes = all_error_classes()
    types = [cls.__dict__.get("type") for cls in classes]
    assert None not in types, [cls.__name__ for cls in classes if "type" not in cls.__dict__]
    assert len(set(types)) == len(types), "two error classes share a type"
    assert set(types) == set(ERRORS), "rows without a class, or classes without a row"


@pytest.mark.parametrize("error, code, status, body_type, record", [
    # What scripts and clients have relied on: usage errors exit 2, a timed-out wait 3; over
    # HTTP an unknown taxonomy or job is 404, the queue away 503, anything else 400 invalid_request.
    (errors.ConfigurationError("x"), 2, 400, "invalid_request", "invalid_configuration"),
    (errors.TaxonomyError("x"), 2, 400, "invalid_request", "invalid_taxonomy"),
    (errors.UnknownTaxonomyError("x"), 2, 404, "unknown_taxonomy", "unknown_taxonomy"),
    (errors.UnknownJobError("x"), 2, 404, "unknown_job", "unknown_job"),
    (errors.InvalidJobIdError("x"), 2, 404, "unknown_job", "unknown_job"),
    (errors.QueueUnavailableError("x"), 2, 503, "queue_unavailable", "queue_unavailable"),
    (errors.RedisRefusedWritesError("x"), 2, 503, "queue_unavailable", "queue_unavailable"),
    (errors.JobTimeout("x"), 3, 504, "job_timeout", "job_timeout"),
    (errors.ExamplesError("x"), 2, 400, "invalid_request", "examples_unavailable"),
    (errors.ImageLoadError("too_many_pixels", "x"), 2, 400, "invalid_request", "too_many_pixels"),
    (errors.FetchError("fetch_timeout", "x", transient=True), 2, 400, "invalid_request", "fetch_timeout"),
    (errors.StoreUnavailableError("x"), 2, 400, "invalid_request", "store_unavailable"),
])
def test_the_table_gives_what_clients_and_scripts_rely_on(error, code, status, body_type, record):
    assert exit_code(error) == code
    assert http_answer(error) == (status, body_type)
    assert record_type(error) == record


def test_a_subclass_without_a_row_is_reported_as_its_nearest_ancestor():
    class Unlisted(errors.QueueUnavailableError):
        pass

    assert http_answer(Unlisted("x")) == (503, "queue_unavailable") and exit_code(Unlisted) == 2


def test_the_cli_and_the_service_answer_from_the_table(monkeypatch):
    """One row changed: the command's exit code and the HTTP answer change with it."""
    import asyncio

    import click
    from click.testing import CliRunner

    from zstagger.cli.common import reports_errors
    from zstagger.service.errors import api_error, zstagger_error

    @click.command()
    @reports_errors
    def fails():
        raise errors.StoreUnavailableError("the store is away")

    assert CliRunner().invoke(fails).exit_code == 2
    assert api_error(errors.StoreUnavailableError("away\nstart it")).status_code == 400
    monkeypatch.setitem(ERRORS, "store_unavailable", errors.Reporting(7, 503, "store_unavailable"))
    result = CliRunner().invoke(fails)
    assert result.exit_code == 7 and "Error: the store is away" in result.output
    error = api_error(errors.StoreUnavailableError("away\nstart it"))
    assert (error.status_code, error.type, error.message) == (503, "store_unavailable", "away; start it")
    response = asyncio.run(zstagger_error(None, errors.StoreUnavailableError("away")))
    assert response.status_code == 503 and b'"store_unavailable"' in response.body
