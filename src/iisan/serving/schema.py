"""The HTTP bodies, as pydantic models: what validation enforces and ``/openapi.json``
describes. A recommendation body is the service's spelling of :class:`~iisan.config.Query`,
the one request type the Python API and the command line use too."""

# No ``from __future__ import annotations``: pydantic and FastAPI read these annotations at runtime.
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from iisan.data.images import FORMATS_READ
from iisan.serving.intake import MAX_KEY_CHARS, MAX_TEXT_CHARS
from iisan.config import Query

MAX_K = 1000  # items one answer may hold
MAX_HISTORY = 200  # keys one history may hold
MAX_ITEMS_PER_REQUEST = 100  # new items one POST /items may add

Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[Key] | None = Field(None, min_length=1, max_length=MAX_HISTORY,
                                      description="Item keys the user interacted with, oldest first.")
    user: Key | None = Field(None, description="Instead of history: a user of the run's dataset (everything they "
                                               "interacted with there).")
    # strict: "5" is not 5 and 1 is not true; a client that sends them has a bug to hear about
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description="How many items to return.")
    exclude_seen: bool = Field(True, strict=True, description="Leave the history's items out of the answer.")
    skip_unknown: bool = Field(False, strict=True, description="Ignore unknown keys instead of answering 422.")

    @model_validator(mode="after")
    def one_source(self):
        if (self.history is None) == (self.user is None):
            raise ValueError("give history or user (one of them)")
        return self

    def query(self) -> Query:
        return Query(history=self.history, user=self.user, k=self.k, exclude_seen=self.exclude_seen,
                     skip_unknown=self.skip_unknown)


class Recommendation(BaseModel):
    key: str
    title: str | None
    score: float
    added: bool = Field(description="Whether the item was added after training (POST /items, iisan items add).")


class RecommendResponse(BaseModel):
    items: list[Recommendation]


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: Key
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    image: str | None = Field(None, description=f"The image file's bytes, base64-encoded ({FORMATS_READ}).")


class AddItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[NewItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


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


MEANINGS = {401: "A valid bearer token is required.", 404: "No such item or user.", 413: "The body is over the limit.",
            422: "Invalid request or unknown item keys.", 503: "The catalogue could not be saved; nothing changed."}


def errors(*codes: int) -> dict:
    """OpenAPI ``responses`` for these error statuses, each with the error body."""
    return {code: {"model": ErrorBody, "description": MEANINGS[code]} for code in codes}
