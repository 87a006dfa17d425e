"""What every route reads: the run being served and the queues and counters around it, kept
on the application (``app.state.served``) and handed to routes as a FastAPI dependency."""

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.exceptions import HTTPException

from iisan.serving.batcher import QueryBatcher, WriteQueue


@dataclass
class Served:
    """The served run (a :class:`~iisan.serving.recommender.Recommender`), its query batcher and
    writer queue, the bearer token writes need (``None``: none) and the Prometheus metrics."""

    recommender: Any
    token: str | None
    batcher: QueryBatcher
    writes: WriteQueue
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    places: Counter  # the items of answers, by whether they were trained or added later

    def __post_init__(self) -> None:
        # the two children, looked up once: every answer counts into them (the hot path)
        self.trained_places, self.added_places = self.places.labels("trained"), self.places.labels("added")

    @classmethod
    def around(cls, recommender: Any, token: str | None) -> "Served":
        registry = CollectorRegistry()
        return cls(
            recommender, token, QueryBatcher(recommender), WriteQueue(), registry,
            requests=Counter("iisan_requests", "HTTP requests served.", ["method", "route", "status"],
                             registry=registry),
            latency=Histogram("iisan_request_seconds", "Time to serve a request.", ["route"], registry=registry,
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
            # whether items added after training are ever shown: the places of the answers by catalogue
            places=Counter("iisan_recommended_items", "Items in recommendation answers, by whether they were in "
                           "the trained catalogue or added after training.", ["catalogue"], registry=registry))

    @property
    def run_dir(self) -> Path | None:
        return getattr(self.recommender, "run_dir", None)


def served(request: Request) -> Served:
    return request.app.state.served


Run = Annotated[Served, Depends(served)]


def require_token(run: Run, authorization: Annotated[str | None, Header()] = None) -> None:
    """Refuse a request without ``Authorization: Bearer <token>`` when the service has a token."""
    if run.token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), run.token.encode()):
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
