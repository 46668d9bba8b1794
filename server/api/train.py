"""Training jobs over HTTP: `POST /api/train`, `GET /api/train`, `GET /api/train/{id}`, `DELETE /api/train/{id}`.

Only translates: wire types (server/api/training_types.py) in and out; adapters/training's
TrainingService does the work. A request that is wrong fails before anything is kept, with a status
(400, 404; 501 naming the `adapters` extra when it is missing). Progress streams as NDJSON lines, as a
pull's does, until the job ends (`{"status": "success", "result": …}`, `{"status": "cancelled"}` or
`{"error": …}`); a client that stops reading stops following, and the job goes on (DELETE cancels it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.response import Stream

from adapters.training import LoraSettings, TrainingSettings, TrainingUnavailable, TrainSpec
from adapters.training.jobs import Job

from ..services import Services
from . import training_types as tt
from .errors import status_for
from .wire import APIError, decode, encode, json_response


def services(request: Request) -> Services:
    return request.app.state.services


def raise_for(exc: BaseException) -> None:
    if isinstance(exc, TrainingUnavailable):
        raise APIError(501, str(exc)) from exc
    status, message = status_for(exc)
    raise APIError(status, message) from exc


def spec_of(req: tt.TrainRequest) -> TrainSpec:
    lora = msgspec.structs.asdict(req.lora) if req.lora is not None else {}
    training = msgspec.structs.asdict(req.training) if req.training is not None else {}
    return TrainSpec(model=req.model, dataset=req.dataset, task=req.task, from_=req.from_, base=req.base,
                     lora=LoraSettings(**lora), training=TrainingSettings(**training), output=req.output,
                     quantize=req.quantize, qlora=req.qlora, labels=req.labels)


def job_of(job: Job) -> tt.TrainJob:
    return tt.TrainJob(id=job.id, model=job.model, task=job.task, status=job.status, created_at=job.created_at,
                       updated_at=job.updated_at, request=job.spec.get("spec", {}), progress=job.progress,
                       result=job.result, error=job.error)


def _line(line: dict[str, Any]) -> bytes:
    return encode(msgspec.convert(line, tt.TrainProgress)) + b"\n"


def _follow(svc: Services, job_id: str) -> Stream:
    async def lines() -> AsyncIterator[bytes]:
        it = svc.training.follow(job_id)
        try:
            async for line in it:
                yield _line(line)
        except Exception as exc:  # the status is sent already: the error goes in-band, as Ollama does
            yield encode(tt.TrainProgress(error=status_for(exc)[1])) + b"\n"
        finally:
            await it.aclose()

    return Stream(content=lines(), media_type="application/x-ndjson")


@post("/api/train", status_code=200)
async def train(request: Request) -> Response | Stream:
    req = await decode(request, tt.TrainRequest)
    svc = services(request)
    try:
        job = await svc.training.submit(spec_of(req))
    except Exception as exc:
        raise_for(exc)
    if req.stream is False:
        return json_response(job_of(job))
    return _follow(svc, job.id)


@get("/api/train")
async def list_jobs(request: Request) -> Response:
    try:
        jobs = await services(request).training.list()
    except Exception as exc:
        raise_for(exc)
    return json_response(tt.TrainJobList(jobs=[job_of(j) for j in jobs]))


@get("/api/train/{job_id:str}")
async def show_job(request: Request, job_id: str) -> Response | Stream:
    """The job's progress from its first line, followed until it ends; `?stream=false`: its record."""
    svc = services(request)
    try:
        job = await svc.training.get(job_id)
    except Exception as exc:
        raise_for(exc)
    stream = request.query_params.get("stream", "true").strip().lower()
    if stream not in ("true", "false", "1", "0"):
        raise APIError(400, "stream must be true or false")
    if stream in ("false", "0"):
        return json_response(job_of(job))
    return _follow(svc, job_id)


@delete("/api/train/{job_id:str}", status_code=200)
async def cancel_job(request: Request, job_id: str) -> Response:
    """A queued or running job is cancelled (a running one stops at its next step); a finished job's
    record and files are removed (the model it made stays). Either way: the job as it stands."""
    svc = services(request)
    try:
        job = await svc.training.get(job_id)
        if job.finished:
            await svc.training.remove(job_id)
        else:
            job = await svc.training.cancel(job_id)
    except Exception as exc:
        raise_for(exc)
    return json_response(job_of(job))


ROUTES = [train, list_jobs, show_job, cancel_job]
