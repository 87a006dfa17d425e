"""``POST /recommend`` and ``GET /users/{id}/recommendations``: the next items for a history,
or for a user of the run's dataset."""

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from iisan.serving.schema import RecommendRequest, RecommendResponse, errors
from iisan.serving.served import Run

router = APIRouter(tags=["recommendations"])


@router.post("/recommend", response_model=RecommendResponse, responses=errors(404, 413, 422),
             summary="Top-k next items for a history")
async def recommend(body: RecommendRequest, run: Run) -> JSONResponse:
    answer = await run.batcher.answer(body.query())
    items = [{**run.recommender.item(key), "score": score} for key, score in answer]
    added = sum(item["added"] for item in items)
    run.added_places.inc(added)
    run.trained_places.inc(len(items) - added)
    # A ready response skips re-validating our own output against the model (hot path).
    return JSONResponse({"items": items})


@router.get("/users/{user:path}/recommendations", response_model=RecommendResponse, responses=errors(404, 422),
            summary="Top-k next items for a user of the run's dataset")
async def recommend_for_user(user: str, run: Run, k: int = 10, exclude_seen: bool = True) -> JSONResponse:
    try:  # the path and query string checked as the body of POST /recommend is: a bad k is the client's 422
        body = RecommendRequest(user=user, k=k, exclude_seen=exclude_seen)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False, include_context=False)) from None
    return await recommend(body, run)
