"""``iisan serve``: the HTTP service around a :class:`~iisan.serving.recommender.Recommender`.

Endpoints, one router per resource (:mod:`iisan.serving.routers`): ``POST /recommend``, ``GET
/users/{id}/recommendations``, ``POST /items`` (bearer token when one is configured), ``GET
/items/{key}``, ``GET /health``, ``GET /metrics`` (Prometheus), OpenAPI at ``/docs``; their
bodies are :mod:`iisan.serving.schema`.

Bad input never reaches a 500: bodies are size-limited before parsing (413), fields are
typed and bounded by pydantic (422), library errors map to 4xx, and every error body is
``{"error": "<one line>"}`` (plus ``unknown`` keys or validation ``detail`` when useful).
"""

from pathlib import Path
from typing import Any

from iisan.errors import (
    ConfigError, IisanError, RunBusyError, RunReplacedError, StorageError, UnknownItemError, UnknownUserError,
)
from iisan.serving.middleware import BodyLimit, InternalErrors, Measure, without_server_paths

MAX_BODY_BYTES = 8 * 1024 * 1024  # a request body beyond this is refused (413) before it is parsed


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


def create_app(recommender, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               access_log: bool = False):
    """The FastAPI application serving ``recommender``. ``token``: required as ``Authorization:
    Bearer`` on writes; ``access_log``: one line per request on the ``iisan.access`` logger."""
    from fastapi import FastAPI

    from iisan.serving.routers import health, items, recommendations
    from iisan.serving.served import Served

    app = FastAPI(title="iisan", summary="Next-item recommendation with IISAN.",
                  description="Recommend the next items for a history of item keys; add new items without retraining.")
    app.state.served = served = Served.around(recommender, token)
    app.add_middleware(InternalErrors)  # innermost of ours: Measure still counts its 500s
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(Measure, requests=served.requests, latency=served.latency, access_log=access_log)
    add_error_handlers(app, served.run_dir)
    for router in (recommendations.router, items.router, health.router):
        app.include_router(router)
    return app


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
