"""`POST /api/classify`: a stored ONNX classifier's labels for one text or several.

Only translates: wire types (server/api/training_types.py) in and out; adapters/classifier.py's
ClassifierService runs the model (off the event loop). An unknown model 404, a model that is no
classifier or a bad input 400, onnxruntime missing 501 naming the `adapters` extra.
"""

from __future__ import annotations

from litestar import Request, Response, post

from ..services import Services
from . import training_types as tt
from .train import raise_for
from .wire import APIError, decode, json_response, until_complete


def services(request: Request) -> Services:
    return request.app.state.services


@post("/api/classify", status_code=200)
async def classify(request: Request) -> Response:
    req = await decode(request, tt.ClassifyRequest)
    if req.input is None:
        raise APIError(400, "input is required: a string or a list of strings")
    svc = services(request)
    try:
        results = await until_complete(request, svc.classifier.classify(req.model, req.input), None, raise_for)
    except APIError:
        raise
    except Exception as exc:
        raise_for(exc)
    return json_response(tt.ClassifyResponse(model=req.model, results=[
        tt.Classification(label=r.label, score=r.score, labels=[tt.LabelScore(x.label, x.score) for x in r.labels])
        for r in results]))


ROUTES = [classify]
