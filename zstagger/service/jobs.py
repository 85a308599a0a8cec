"""Async jobs over HTTP: submit, follow, fetch results, cancel. The work goes through the
existing Celery queue on Redis (``ZSTAGGER_REDIS_URL``); this module only translates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field, StringConstraints
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.responses import JSONResponse, StreamingResponse

from ..errors import ZstaggerError
from .errors import ApiError, api_error
from .requests import TagRequest, check_count, image_from_json, openapi_body, parse_json, taxonomies_for
from .routes import needs, service


class JobRequest(TagRequest):
    """``POST /v1/jobs``: the body of ``/v1/tag``, plus where and how to run it."""

    queue: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")] = Field(
        "bulk", description="interactive or bulk (or any queue your workers consume).")
    chunk_size: int | None = Field(None, ge=1, le=1024, description="Images per task (default ZSTAGGER_CHUNK_SIZE).")
    callback_url: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        None, description="Receives a signed POST when the job is done or cancelled (see the README's webhook section).")
    sink: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        None, description="Also write each finished chunk's results here: an object-store prefix inside the server's "
        "ZSTAGGER_SINK_ALLOW (JSON Lines, a file per chunk), or an https URL (a signed event per chunk).")


jobs = APIRouter(prefix="/v1/jobs", dependencies=[Depends(needs("jobs"))], tags=["jobs"],
                 responses={401: {"description": "Missing or invalid API key"},
                            503: {"description": "Redis is not configured or cannot be reached"}})


def queue_settings(request: Request):
    settings = service(request).settings
    if "redis_url" not in settings.model_fields_set:
        raise ApiError(503, "jobs_unavailable",
                       "async jobs need Redis: start the service with ZSTAGGER_REDIS_URL set (and run `zstagger worker`s)")
    return settings


def _queue_call(call, *args, **kwargs):
    """Run a producer call, turning zstagger's own errors into HTTP errors (unknown job 404,
    queue away 503, anything else 400: the table of errors)."""
    try:
        return call(*args, **kwargs)
    except ZstaggerError as exc:
        raise api_error(exc) from None


def _links(request: Request, job_id: str) -> dict[str, str]:
    base = str(request.url_for("job_status", job_id=job_id))
    return {"status_url": base, "results_url": base + "/results"}


@jobs.post("", status_code=202, openapi_extra=openapi_body(JobRequest))
async def submit_job(request: Request) -> JSONResponse:
    """Enqueue images for the workers; answers at once with the job id and where to follow it."""
    settings = queue_settings(request)
    raw = await request.body()
    body, spec, refs = await service(request).bodies(len(raw), job_request_from_json, raw, settings)
    from ..queue.client import enqueue
    from ..queue.jobstore import new_job_id

    job_id = new_job_id()
    chosen = {"taxonomies": spec} if isinstance(spec, list) else {"taxonomy": spec}
    job = await run_in_threadpool(_queue_call, enqueue, refs, **chosen, top_k=body.top_k, chunk_size=body.chunk_size,
                                  queue=body.queue, callback_url=body.callback_url, sink=body.sink,
                                  results_url=_links(request, job_id)["results_url"], job_id=job_id, settings=settings,
                                  trusted=False)
    return JSONResponse({"job_id": job.id, **_links(request, job.id)}, status_code=202)


def job_request_from_json(raw: bytes, settings) -> tuple[JobRequest, Any, list]:
    body = parse_json(JobRequest, raw)
    check_count(len(body.images), settings.max_job_images)
    spec = taxonomies_for(body.taxonomy, body.taxonomies, body.labels, body.template, settings.max_request_labels)
    return body, spec, [image_from_json(value, i, settings) for i, value in enumerate(body.images)]


def _job(request: Request, job_id: str):
    from ..queue.client import Job

    settings = queue_settings(request)
    return _queue_call(Job, job_id, settings)  # a malformed id is an unknown job: 404


@jobs.get("/{job_id}", name="job_status")
def job_status(request: Request, job_id: Annotated[str, StringConstraints(max_length=128)]) -> dict[str, Any]:
    """Progress: state (pending, running, done), total, done, failed, pending."""
    job = _job(request, job_id)
    return {**_queue_call(job.status), **_links(request, job_id)}


@jobs.delete("/{job_id}")
def cancel_job(request: Request, job_id: Annotated[str, StringConstraints(max_length=128)]) -> dict[str, Any]:
    """Cancel: chunks not yet started are skipped; the status says ``cancelled`` (a done job stays done)."""
    job = _job(request, job_id)
    return {**_queue_call(job.cancel), **_links(request, job_id)}


@jobs.get("/{job_id}/results", responses={200: {"content": {"application/x-ndjson": {}}}})
def job_results(
    request: Request,
    job_id: Annotated[str, StringConstraints(max_length=128)],
    format: Annotated[str, Query(pattern="^(json|jsonl)$")] = "json",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
):
    """Finished results in input order: paged JSON (``offset``/``limit``), or every one as JSON Lines (``format=jsonl``)."""
    job = _job(request, job_id)
    status = _queue_call(job.status)
    if format == "jsonl":
        def stream() -> Iterator[str]:  # page by page from Redis: constant memory for any job size
            for line in job.result_lines():
                yield line + "\n"

        return StreamingResponse(iterate_in_threadpool(stream()), media_type="application/x-ndjson",
                                 headers={"X-Job-State": status["state"]})
    page = _queue_call(job.result_page, offset, limit)
    return {"job_id": job_id, "state": status["state"], "total": status["total"], "offset": offset,
            "results": [json.loads(line) if line is not None else None for line in page],
            "next_offset": offset + limit if offset + limit < status["total"] else None}
