"""``GET /health`` (whether queries are answered) and ``GET /metrics`` (Prometheus)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from iisan.serving.middleware import without_server_paths
from iisan.serving.schema import Health
from iisan.serving.served import Run

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Queries fail."}},
            summary="Whether queries are answered: 200 ok, 503 failing (with the problems)")
def health(run: Run) -> JSONResponse:
    report = run.recommender.health()
    report["problems"] = [without_server_paths(problem, run.run_dir) for problem in report["problems"]]
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(run: Run) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(run.registry).decode(), media_type=CONTENT_TYPE_LATEST)
