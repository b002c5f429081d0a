"""Wire contracts (pydantic v2): events, items, recommendations, dead letters.

Inputs are validated strictly (no silent coercion of "4.5" into 4.5) and every error names the
field. Limits (text length, tag count, id length) come from the validation context so that they
are settings, not constants; :func:`decode` applies the byte-level checks before pydantic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from encoders.texts import has_text

EventType = Literal[
    "view", "click", "add_to_cart", "purchase", "rate", "search", "review", "profile"
]
ITEM_EVENT_TYPES: frozenset[str] = frozenset(
    {"view", "click", "add_to_cart", "purchase", "rate", "review"}
)
TEXT_EVENT_TYPES: frozenset[str] = frozenset({"search", "profile"})
Source = Literal["content", "covisit", "trending"]
SOURCES: frozenset[str] = frozenset(get_args(Source))
# why a record went to the dead-letter topic (README, "Wire contracts")
DeadLetterReason = Literal[
    "empty", "too_large", "bad_utf8", "bad_json", "schema", "unknown_item", "processing_error"
]

EPOCH_MS_MIN = 1e11  # 1973-03-03 in epoch milliseconds; as epoch seconds, the year 5138

# what ``_to_datetime`` accepts, for the published JSON Schema (pydantic would say "date-time
# string" only, and a client validating with it would refuse epoch milliseconds)
Timestamp = Annotated[
    datetime,
    WithJsonSchema(
        {
            "anyOf": [
                # no "format": "date-time" (RFC 3339 wants an offset and a full time; the
                # worker also takes "2024-05-01" and a naive time as UTC)
                {"type": "string", "minLength": 1},
                {"type": "number", "minimum": EPOCH_MS_MIN, "description": "epoch milliseconds"},
            ],
            "description": "ISO-8601 (no offset = UTC) or epoch milliseconds",
        }
    ),
]


def _rules_by_type(schema: dict[str, Any]) -> None:
    """The per-type requirements of :meth:`BehaviorEvent._required_by_type`, in JSON Schema
    (a model validator is invisible to pydantic's schema)."""
    schema["allOf"] = [
        {
            "if": {"properties": {"type": {"enum": sorted(ITEM_EVENT_TYPES)}}},
            "then": {
                "required": ["item_id"],
                "properties": {"item_id": {"type": "string", "minLength": 1}},
            },
        },
        {
            "if": {"properties": {"type": {"enum": sorted(TEXT_EVENT_TYPES)}}},
            "then": {
                "required": ["text"],
                "properties": {"text": {"type": "string", "pattern": "\\S"}},
            },
        },
        {
            "if": {"properties": {"type": {"const": "rate"}}},
            "then": {"required": ["rating"], "properties": {"rating": {"type": "number"}}},
        },
    ]


@dataclass(frozen=True)
class Limits:
    """Input limits; the worker builds them from settings (``COLDSTREAM_MAX_*``)."""

    max_payload_bytes: int = 64 * 1024
    max_text_chars: int = 4096
    max_tags: int = 64
    max_id_chars: int = 256
    max_label_chars: int = 256  # an item's category, brand and each tag
    # an event's ts further ahead of this process's clock than this is refused: a year-9999
    # event would stop its user's profile decay for good
    max_future_s: float = 86_400.0


DEFAULT_LIMITS = Limits()


def _limits(info: ValidationInfo) -> Limits:
    ctx = info.context
    if isinstance(ctx, dict) and isinstance(ctx.get("limits"), Limits):
        return ctx["limits"]
    return DEFAULT_LIMITS


def _to_datetime(value: Any) -> Any:
    """Accept ISO-8601 strings or epoch milliseconds (ints), as the contract says."""
    if isinstance(value, bool):
        raise ValueError("ts must be an ISO-8601 string or epoch milliseconds")
    if isinstance(value, int | float):
        if value < EPOCH_MS_MIN:
            # epoch seconds sent for milliseconds land in January 1970, where trending decays
            # them to nothing and a profile's decay runs from 1970: refused, with the likely cause
            raise ValueError(
                f"epoch milliseconds expected; {value!r} would be before 1973 "
                "(epoch seconds? multiply by 1000)"
            )
        try:
            return datetime.fromtimestamp(value / 1000.0, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"epoch milliseconds out of range: {value}") from exc
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 timestamp: {value[:40]!r}") from exc
    return value


class _Input(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    @field_validator("ts", mode="before", check_fields=False)
    @classmethod
    def _ts(cls, value: Any) -> Any:
        return _to_datetime(value)

    @field_validator("ts", mode="after", check_fields=False)
    @classmethod
    def _ts_aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


NonEmptyId = Annotated[str, Field(min_length=1)]


class BehaviorEvent(_Input):
    """One user-behavior event from the ``events`` topic (key = user_id)."""

    model_config = ConfigDict(json_schema_extra=_rules_by_type)

    event_id: NonEmptyId
    user_id: NonEmptyId
    type: EventType
    # required for the item types; a search or profile event's item_id (a page it came from)
    # is ignored: the event applies its text, and an id the catalog lacks must not hold it
    item_id: str | None = None
    text: str | None = None
    rating: float | None = Field(None, ge=0, le=10)
    ts: Timestamp

    @property
    def applied_item_id(self) -> str | None:
        """The item the event is about: None for the text-only types, whatever it carries."""
        return None if self.type in TEXT_EVENT_TYPES else self.item_id

    @field_validator("ts", mode="after")
    @classmethod
    def _not_far_ahead(cls, value: datetime, info: ValidationInfo) -> datetime:
        # a year-9999 event would stop its user's profile decay for good: later events look
        # older. (An item's ts may be ahead, a release date: the pipeline stamps its arrival.)
        ahead = value.timestamp() - time.time()
        limit = _limits(info).max_future_s
        if ahead > limit:
            raise ValueError(f"{ahead:.0f} s in the future, the limit is {limit:g} s")
        return value

    @field_validator("event_id", "user_id", "item_id")
    @classmethod
    def _id_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            limit = _limits(info).max_id_chars
            if len(value) > limit:
                raise ValueError(f"longer than {limit} characters")
            if not value.strip():
                raise ValueError("must not be blank")
        return value

    @field_validator("text")
    @classmethod
    def _text_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            limit = _limits(info).max_text_chars
            if len(value) > limit:
                raise ValueError(f"text is {len(value)} characters, the limit is {limit}")
        return value

    @model_validator(mode="after")
    def _required_by_type(self) -> BehaviorEvent:
        if self.type in ITEM_EVENT_TYPES and not self.item_id:
            raise ValueError(f"item_id is required for type {self.type!r}")
        if self.type in TEXT_EVENT_TYPES and not (self.text and self.text.strip()):
            raise ValueError(f"text is required (non-empty) for type {self.type!r}")
        if self.type == "rate" and self.rating is None:
            raise ValueError("rating is required for type 'rate'")
        return self

    @property
    def ts_epoch(self) -> float:
        return self.ts.timestamp()

    @property
    def signal_text(self) -> str | None:
        """The user-side text this event contributes, if any (search, profile, review)."""
        if self.text and self.text.strip() and self.type in {"search", "profile", "review"}:
            return self.text
        return None


class ItemEvent(_Input):
    """One catalog item from the ``items`` topic (key = item_id); ``active=false`` retires it."""

    item_id: NonEmptyId
    title: str = ""
    description: str | None = None
    category: str | None = None
    tags: list[str] = Field(default_factory=list)
    brand: str | None = None
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)
    ts: Timestamp | None = None
    active: bool = True

    @field_validator("item_id")
    @classmethod
    def _id_length(cls, value: str, info: ValidationInfo) -> str:
        limit = _limits(info).max_id_chars
        if len(value) > limit:
            raise ValueError(f"longer than {limit} characters")
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("title", "description")
    @classmethod
    def _text_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        limit = _limits(info).max_text_chars
        if value is not None and len(value) > limit:
            raise ValueError(f"text is {len(value)} characters, the limit is {limit}")
        return value

    @field_validator("category", "brand")
    @classmethod
    def _label_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        limit = _limits(info).max_label_chars
        if value is not None and len(value) > limit:
            raise ValueError(f"{len(value)} characters, the limit is {limit}")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str], info: ValidationInfo) -> list[str]:
        limits = _limits(info)
        if len(value) > limits.max_tags:
            raise ValueError(f"{len(value)} tags, the limit is {limits.max_tags}")
        longest, limit = max(map(len, value), default=0), limits.max_label_chars
        if longest > limit:
            raise ValueError(f"a tag of {longest} characters, the limit is {limit}")
        return value

    @model_validator(mode="after")
    def _has_text(self) -> ItemEvent:
        # the text the encoder gets drops blanks and trailing stops: a title of "..." is none
        if self.active and not any(
            has_text(s) for s in (self.title, self.description, self.category)
        ):
            raise ValueError("an active item needs a title, description or category to encode")
        return self


class RecommendedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str
    rank: int = Field(ge=1)
    score: float
    source: Source
    reasons: list[str] = Field(default_factory=list)


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoder: str
    ranker: str


class Recommendation(BaseModel):
    """One ranked list for one user, emitted on ``recommendations`` (key = user_id)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    trigger_event_id: str
    generated_at: datetime
    profile_events: int = Field(ge=0)
    items: list[RecommendedItem]
    model: ModelInfo
    latency_ms: float = Field(ge=0)


class DeadLetter(BaseModel):
    """What went wrong with one input record, and enough of it to replay or debug."""

    model_config = ConfigDict(extra="forbid")

    topic: str
    partition: int
    offset: int
    key: str | None
    raw: str
    error: str
    reason: DeadLetterReason
    ts: datetime


RAW_PREVIEW_BYTES = 4096
ERROR_MAX_PROBLEMS = 20  # validation problems named in a dead letter's error
ERROR_PREVIEW_CHARS = 4096  # a dead letter's error text at most (then how much was cut)


class InvalidPayload(ValueError):
    """A record that cannot be applied; ``reason`` is a short code for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


M = TypeVar("M", bound=BaseModel)


def decode(raw: bytes | None, model: type[M], limits: Limits = DEFAULT_LIMITS) -> M:
    """Bytes from Kafka → validated model, or :class:`InvalidPayload` with a reason code."""
    if raw is None:
        raise InvalidPayload("empty", "record has no value")
    if len(raw) > limits.max_payload_bytes:
        raise InvalidPayload(
            "too_large", f"payload is {len(raw)} bytes, the limit is {limits.max_payload_bytes}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload("bad_utf8", f"payload is not valid UTF-8: {exc}") from exc
    try:
        return model.model_validate_json(text, context={"limits": limits})
    except ValidationError as exc:
        kinds = {err["type"] for err in exc.errors()}
        if "json_invalid" in kinds:
            raise InvalidPayload("bad_json", format_validation_error(exc)) from exc
        raise InvalidPayload("schema", format_validation_error(exc)) from exc


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming its field: ``rating: Input should be a valid number``.

    At most :data:`ERROR_MAX_PROBLEMS`, then how many more: pydantic reports every element of
    a bad list (several per union member), so a 64 KiB record of ``"tags": [1, 1, …]`` made a
    1.4 MB message, a dead letter the producer refused as too large, resent forever.
    """
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:ERROR_MAX_PROBLEMS]:
        loc = ".".join(str(p) for p in err["loc"]) or "(payload)"
        parts.append(f"{loc}: {err['msg']}")
    if len(errors) > ERROR_MAX_PROBLEMS:
        parts.append(f"and {len(errors) - ERROR_MAX_PROBLEMS} more problems")
    return "; ".join(parts)


def error_preview(error: str) -> str:
    """A dead letter's error text, cut at :data:`ERROR_PREVIEW_CHARS` (the record's size bound
    holds for every message, whatever raised it)."""
    if len(error) <= ERROR_PREVIEW_CHARS:
        return error
    return error[:ERROR_PREVIEW_CHARS] + f" … ({len(error) - ERROR_PREVIEW_CHARS} more characters)"


def raw_preview(raw: bytes | None) -> str:
    """First 4 KiB of a record as text, undecodable bytes escaped, for the dead-letter topic."""
    if raw is None:
        return ""
    return raw[:RAW_PREVIEW_BYTES].decode("utf-8", errors="backslashreplace")


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of each wire contract, keyed by topic role."""
    return {
        "events": BehaviorEvent.model_json_schema(),
        "items": ItemEvent.model_json_schema(),
        "recommendations": Recommendation.model_json_schema(),
        "dead-letter": DeadLetter.model_json_schema(),
    }
