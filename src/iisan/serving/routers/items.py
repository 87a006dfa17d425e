"""``POST /items`` (new items from their content, without retraining) and ``GET /items/{key}``."""

import base64
import binascii

from fastapi import APIRouter, Depends
from starlette.exceptions import HTTPException

from iisan.errors import InputError
from iisan.serving.intake import MAX_KEY_CHARS
from iisan.serving.schema import AddItemsRequest, AddItemsResponse, Item, NewItem, errors
from iisan.serving.served import Run, require_token

router = APIRouter(prefix="/items", tags=["items"])


@router.post("", response_model=AddItemsResponse, dependencies=[Depends(require_token)],
             responses=errors(401, 413, 422, 503), summary="Add items from their content, without retraining")
async def add_items(body: AddItemsRequest, run: Run) -> dict:
    added = await run.writes.run(lambda: run.recommender.add_items(decoded_items(body.items)))
    return {"added": added, "items": run.recommender.num_items}


# :path, so a key holding "/" (which POST /items accepts) can be looked up too
@router.get("/{key:path}", response_model=Item, responses=errors(404, 422), summary="One item of the catalogue")
def get_item(key: str, run: Run) -> dict:
    run.recommender.store.refresh()  # what another server on the run committed, as queries see it
    if key not in run.recommender.ids:
        raise HTTPException(404, f"unknown item key: {key[:MAX_KEY_CHARS]!r}")
    return run.recommender.item(key)


def decoded_items(items: list[NewItem]) -> list[dict]:
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
