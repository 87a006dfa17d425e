"""``iisan serve``: the HTTP service around a :class:`~iisan.serving.recommender.Recommender`.

Endpoints: ``POST /recommend``, ``POST /items`` (bearer token when one is configured),
``GET /items/{key}``, ``GET /health``, ``GET /metrics`` (Prometheus), OpenAPI at ``/docs``.

Bad input never reaches a 500: bodies are size-limited before parsing (413), fields are
typed and bounded by pydantic (422), library errors map to 4xx, and every error body is
``{"error": "<one line>"}`` (plus ``unknown`` keys or validation ``detail`` when useful).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the request models'
# annotations at runtime, and they are local to create_app (their bounds come from Limits).
import base64
import binascii
import hmac
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

from iisan.data.images import FORMATS_READ
from iisan.errors import (
    ConfigError, IisanError, InputError, RunBusyError, RunReplacedError, StorageError, UnknownItemError, UnknownUserError,
)
from iisan.serving.batcher import QueryBatcher, WriteQueue
from iisan.serving.intake import MAX_KEY_CHARS, MAX_TEXT_CHARS
from iisan.serving.middleware import BodyLimit, InternalErrors, Measure, without_server_paths
from iisan.serving.recommender import Query


MAX_K = 1000


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_history: int = 200
    max_key_chars: int = MAX_KEY_CHARS
    max_k: int = MAX_K
    max_items_per_request: int = 100
    max_text_chars: int = MAX_TEXT_CHARS


def request_models(limits: Limits) -> SimpleNamespace:
    """The request and response bodies as pydantic models, their bounds from ``limits``
    (so they are made per app): what validation enforces and ``/openapi.json`` describes."""
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

    Key = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_key_chars)]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: list[Key] | None = Field(None, min_length=1, max_length=limits.max_history,
                                          description="Item keys the user interacted with, oldest first.")
        user: Key | None = Field(None, description="Instead of history: a user of the run's dataset (their "
                                                   "history there).")
        # strict: "5" is not 5 and 1 is not true; a client that sends them has a bug to hear about
        k: int = Field(10, ge=1, le=limits.max_k, strict=True, description="How many items to return.")
        exclude_seen: bool = Field(True, strict=True, description="Leave the history's items out of the answer.")
        skip_unknown: bool = Field(False, strict=True, description="Ignore unknown keys instead of answering 422.")

        @model_validator(mode="after")
        def one_source(self):
            if (self.history is None) == (self.user is None):
                raise ValueError("give history or user (one of them)")
            return self

    class Recommendation(BaseModel):
        key: str
        title: str | None
        score: float
        added: bool = Field(description="Whether the item was added after training (POST /items, "
                                        "iisan items add).")

    class RecommendResponse(BaseModel):
        items: list[Recommendation]

    class NewItem(BaseModel):
        model_config = ConfigDict(extra="forbid")
        key: Key
        text: str | None = Field(None, max_length=limits.max_text_chars)
        image: str | None = Field(None, description=f"The image file's bytes, base64-encoded ({FORMATS_READ}).")

    class AddItemsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[NewItem] = Field(min_length=1, max_length=limits.max_items_per_request)

    class AddItemsResponse(BaseModel):
        added: list[str]
        items: int

    class Item(BaseModel):
        key: str
        title: str | None
        added: bool

    class ErrorBody(BaseModel):
        error: str = Field(description="One line saying what is wrong.")
        unknown: list[str] | None = Field(None, description="422 for unknown item keys: the keys (up to 100).")
        detail: list[dict] | None = Field(None, description="422 for invalid fields: each problem's loc and msg.")

    class Health(BaseModel):
        status: str = Field(description="ok, or failing (answered with 503)")
        items: int
        index: str
        problems: list[str]

    return SimpleNamespace(RecommendRequest=RecommendRequest, Recommendation=Recommendation,
                           RecommendResponse=RecommendResponse, NewItem=NewItem, AddItemsRequest=AddItemsRequest,
                           AddItemsResponse=AddItemsResponse, Item=Item, ErrorBody=ErrorBody, Health=Health)


def add_error_handlers(app, run_dir: Path | None = None):
    """Every error answer is ``{"error": "<one line>"}`` with the right status: 422 for the
    request's faults, 503 (with Retry-After) for the server's (a full disk, a busy run); the
    server's own messages name the run, not its paths (:func:`without_server_paths`).
    Returns the helper that makes such an answer."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def error(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors]
        if errors and errors[0].get("type") == "json_invalid":  # its loc is ("body", character)
            reason = errors[0].get("ctx", {}).get("error", "")
            return error(422, f"the body is not valid JSON (character {detail[0]['loc'][-1]}: {reason})",
                         detail=detail)
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        return error(422, f"{where}: {first['msg']}", detail=detail)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        response = error(exc.status_code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(UnknownItemError)
    async def unknown_items(_: Request, exc: UnknownItemError) -> JSONResponse:
        return error(422, str(exc), unknown=exc.keys[:100])

    @app.exception_handler(UnknownUserError)
    async def unknown_user(_: Request, exc: UnknownUserError) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(IisanError)
    async def library_error(_: Request, exc: IisanError) -> JSONResponse:
        message = without_server_paths(str(exc), run_dir)
        # A failed write (disk full) or another writer holding the run is the server's trouble,
        # not the request's: 503, the catalogue unchanged, and the request can be retried.
        if isinstance(exc, (StorageError, RunBusyError)):
            response = error(503, message)
            response.headers["Retry-After"] = "5"
            return response
        if isinstance(exc, RunReplacedError):  # the server's state, not the request's: no retry helps
            return error(503, message)
        return error(422, message)

    return error


def user_request(schema: SimpleNamespace, user: str, k: int, exclude_seen: bool):
    """``GET /users/{id}/recommendations``'s path and query string as the body of ``POST
    /recommend``, checked as the body is: a bad ``k`` or an overlong id is the client's 422."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    try:
        return schema.RecommendRequest(user=user, k=k, exclude_seen=exclude_seen)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False, include_context=False)) from None


def create_app(recommender, token: str | None = None, limits: Limits = Limits(), access_log: bool = False):
    """The FastAPI application. ``token``: required as ``Authorization: Bearer`` on writes;
    ``access_log``: one line per request on the ``iisan.access`` logger."""
    from fastapi import Depends, FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    schema = request_models(limits)

    def errors(*codes: int) -> dict:
        meaning = {401: "A valid bearer token is required.", 404: "No such item or user.", 413: "The body is over the limit.",
                   422: "Invalid request or unknown item keys.", 503: "The catalogue could not be saved; nothing changed."}
        return {code: {"model": schema.ErrorBody, "description": meaning[code]} for code in codes}

    registry = CollectorRegistry()
    requests = Counter("iisan_requests", "HTTP requests served.", ["method", "route", "status"], registry=registry)
    latency = Histogram("iisan_request_seconds", "Time to serve a request.", ["route"], registry=registry,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
    # Whether items added after training are ever shown: the places of the answers by catalogue.
    places = Counter("iisan_recommended_items", "Items in recommendation answers, by whether they were in the "
                     "trained catalogue or added after training.", ["catalogue"], registry=registry)
    trained_places, added_places = places.labels("trained"), places.labels("added")

    app = FastAPI(title="iisan", summary="Next-item recommendation with IISAN.",
                  description="Recommend the next items for a history of item keys; add new items without retraining.")
    app.add_middleware(InternalErrors)  # innermost of ours: Measure still counts its 500s
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(Measure, requests=requests, latency=latency, access_log=access_log)

    run_dir = getattr(recommender, "run_dir", None)
    add_error_handlers(app, run_dir)

    batcher, writes = QueryBatcher(recommender), WriteQueue()

    @app.post("/recommend", response_model=schema.RecommendResponse, responses=errors(413, 422),
              summary="Top-k next items for a history")
    async def recommend(body: schema.RecommendRequest) -> JSONResponse:
        history = body.history if body.user is None else await run_in_threadpool(recommender.history_of, body.user)
        answer = await batcher.answer(Query(history, body.k, body.exclude_seen, "skip" if body.skip_unknown else "raise"))
        items = [{**recommender.item(key), "score": score} for key, score in answer]
        added = sum(item["added"] for item in items)
        added_places.inc(added)
        trained_places.inc(len(items) - added)
        # A ready response skips re-validating our own output against the model (hot path).
        return JSONResponse({"items": items})

    @app.get("/users/{user:path}/recommendations", response_model=schema.RecommendResponse,
             responses=errors(404, 422), summary="Top-k next items for a user of the run's dataset")
    async def recommend_for_user(user: str, k: int = 10, exclude_seen: bool = True) -> JSONResponse:
        return await recommend(user_request(schema, user, k, exclude_seen))

    @app.post("/items", response_model=schema.AddItemsResponse, dependencies=[Depends(bearer_check(token))],
              responses=errors(401, 413, 422, 503), summary="Add items from their content, without retraining")
    async def add_items(body: schema.AddItemsRequest) -> dict:
        added = await writes.run(lambda: recommender.add_items(decoded_items(body.items)))
        return {"added": added, "items": recommender.num_items}

    # :path, so a key holding "/" (which POST /items accepts) can be looked up too
    @app.get("/items/{key:path}", response_model=schema.Item, responses=errors(404, 422), summary="One item of the catalogue")
    def get_item(key: str) -> dict:
        recommender.store.refresh()  # what another server on the run committed, as queries see it
        if key not in recommender.ids:
            raise HTTPException(404, f"unknown item key: {key[:limits.max_key_chars]!r}")
        return recommender.item(key)

    @app.get("/health", response_model=schema.Health, responses={503: {"model": schema.Health, "description": "Queries fail."}},
             summary="Whether queries are answered: 200 ok, 503 failing (with the problems)")
    def health() -> JSONResponse:
        report = recommender.health()
        report["problems"] = [without_server_paths(problem, run_dir) for problem in report["problems"]]
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def bearer_check(token: str | None):
    """A FastAPI dependency refusing requests without ``Authorization: Bearer <token>``
    (none when ``token`` is ``None``)."""
    from fastapi import Header
    from starlette.exceptions import HTTPException

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    return require_token


def decoded_items(items) -> list[dict]:
    """``POST /items`` items as :meth:`Recommender.add_items` takes them: images from base64.

    Raises:
        InputError: an image that is not valid base64, naming the item.
    """
    decoded = []
    for n, item in enumerate(items):
        image = None
        if item.image is not None:
            try:
                image = base64.b64decode(item.image, validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"items.{n}.image: not valid base64") from None
        decoded.append({"key": item.key, "text": item.text, "image": image})
    return decoded


def read_token(path) -> str:
    """The bearer token from a file (surrounding whitespace ignored).

    Raises:
        ConfigError: the file is unreadable, empty, or holds what an HTTP header cannot carry alike
            for every client (spaces, control characters, non-ASCII).
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the token file {path}: {err}") from err
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    if not all("!" <= ch <= "~" for ch in token):  # HTTP carries headers as bytes: ASCII alone is read alike
        raise ConfigError(f"the token file {path} holds a space, a control character or a character outside "
                          "ASCII, which clients would send differently; use letters, digits and punctuation "
                          "(for example `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
