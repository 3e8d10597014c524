"""The REST API's documented responses: every status with a description and a real example.

Used as ``responses=`` on the session routes (and on the ``/v1`` router for what every call may
get); :func:`fill_examples` gives an example to any error response a route declares without one.
``tests/gateway/test_docs.py`` checks each example against what a real gateway answers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from tutor_contract.knowledge import KB_ID_RULE

from ..schemas import CREATE_SESSION_EXAMPLE, HEALTH_EXAMPLE, SESSION_EXAMPLE, SESSION_LIST_EXAMPLE

JSON = "application/json"


class ErrorDetail(BaseModel):
    """Every refusal but 422: a JSON object with one human-readable ``detail``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "Session not found"}]})

    detail: str


class FieldProblem(BaseModel):
    """One problem of a 422: its kind, where (``loc``), in words, and the input it concerns."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationProblems(BaseModel):
    """422: FastAPI's ``detail`` list, one entry per problem."""

    detail: list[FieldProblem]


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": 'The scheme: `Bearer realm="tutor-gateway"`, with '
        '`error="invalid_token"` when a wrong key was sent (RFC 6750).',
        "schema": {"type": "string"},
    }
}


def _examples(**named: tuple[str, Any]) -> dict[str, Any]:
    """OpenAPI ``examples``: name → (summary, value)."""
    return {name: {"summary": summary, "value": value} for name, (summary, value) in named.items()}


def error(
    description: str,
    headers: dict[str, Any] | None = None,
    **examples: tuple[str, str],
) -> dict[str, Any]:
    """A documented error response with ``{"detail": …}`` examples."""
    content = {k: (summary, {"detail": detail}) for k, (summary, detail) in examples.items()}
    response: dict[str, Any] = {
        "model": ErrorDetail,
        "description": description,
        "content": {JSON: {"examples": _examples(**content)}},
    }
    if headers:
        response["headers"] = headers
    return response


def success(description: str, example: Any) -> dict[str, Any]:
    """A documented success response: its example (the schema is the route's model)."""
    return {"description": description, "content": {JSON: {"example": example}}}


UNAUTHORIZED = error(
    "No or a wrong management API key (only when `MANAGEMENT_API_KEYS` or "
    "`MANAGEMENT_API_KEYS_FILE` is set).",
    WWW_AUTHENTICATE,
    missing=(
        "no Authorization header",
        "Missing management API key: send Authorization: Bearer <key>",
    ),
    invalid=("a key that is not configured", "Invalid management API key"),
)
REQUESTS_EXAMPLE = (
    "MAX_REQUESTS_PER_MINUTE",
    "Too many requests: more than 600 per minute from this client (MAX_REQUESTS_PER_MINUTE)",
)
RATE_LIMITED = error(
    "Over `MAX_REQUESTS_PER_MINUTE` for this API key (or client address).",
    RETRY_AFTER,
    requests=REQUESTS_EXAMPLE,
)
STORE_EXAMPLE = (
    "cluster mode: the Kubernetes API did not answer",
    "Kubernetes API unreachable (read the session): ReadTimeout",
)
STORE_UNAVAILABLE = error(
    "The session store cannot be used: the local session database, or the Kubernetes API "
    "(cluster mode).",
    store=STORE_EXAMPLE,
)
NOT_FOUND = error(
    "No such session: it never existed, was ended or expired.",
    not_found=("an unknown session id", "Session not found"),
)
BODY_TOO_LARGE = error(
    "The body is larger than `MAX_REQUEST_BODY_BYTES`.",
    too_large=("a body over the limit", "Request body larger than 65536 bytes"),
)

VALIDATION_BODY = {
    "detail": [
        {
            "type": "missing",
            "loc": ["body", "tutor_id"],
            "msg": "Field required",
            "input": {"student_id": 1},
        }
    ]
}
VALIDATION_KB_ID = {
    "detail": [
        {
            "type": "kb_id",
            "loc": ["body", "kb_id"],
            "msg": f"kb_id must be {KB_ID_RULE}",
            "input": "../etc",
            "ctx": {"rule": KB_ID_RULE},
        }
    ]
}
VALIDATION_PATH = {
    "detail": [
        {
            "type": "string_too_long",
            "loc": ["path", "session_id"],
            "msg": "String should have at most 64 characters",
            "input": "x" * 65,
            "ctx": {"max_length": 64},
        }
    ]
}


def validation(**named: tuple[str, Any]) -> dict[str, Any]:
    """422: FastAPI's ``detail`` list (``HTTPValidationError``), with examples."""
    return {
        "model": ValidationProblems,
        "description": "The request does not fit: `detail` lists each problem and names its "
        "field (`loc`).",
        "content": {JSON: {"examples": _examples(**named)}},
    }


Responses = dict[int | str, dict[str, Any]]  # FastAPI's ``responses=``, by status code

# Every /v1 (and /mgmt/v1) call may get these.
MANAGEMENT: Responses = {401: UNAUTHORIZED, 429: RATE_LIMITED, 503: STORE_UNAVAILABLE}

CREATE: Responses = {
    201: success(
        "The session: where the browser connects, with its token.", CREATE_SESSION_EXAMPLE
    ),
    413: BODY_TOO_LARGE,
    422: validation(
        missing_field=("a required field is missing", VALIDATION_BODY),
        bad_kb_id=("kb_id breaks the rule", VALIDATION_KB_ID),
    ),
    429: {
        **error(
            "A session or cold-start limit: `MAX_SESSIONS_PER_STUDENT`, "
            "`MAX_SESSIONS_PER_TUTOR`, `MAX_CONCURRENT_COLD_STARTS` (cluster mode), or "
            "`MAX_REQUESTS_PER_MINUTE`; `detail` names it.",
            RETRY_AFTER,
            student=(
                "MAX_SESSIONS_PER_STUDENT",
                "Too many sessions for student 1: 3 alive (MAX_SESSIONS_PER_STUDENT 3); end "
                "one first",
            ),
            tutor=(
                "MAX_SESSIONS_PER_TUTOR",
                "Too many sessions for tutor 1: 10 alive (MAX_SESSIONS_PER_TUTOR 10)",
            ),
            cold_starts=(
                "MAX_CONCURRENT_COLD_STARTS",
                "Too many tutor engines starting: 2 under way (MAX_CONCURRENT_COLD_STARTS 2); "
                "tutor 7 has no engine running yet",
            ),
            requests=REQUESTS_EXAMPLE,
        )
    },
    503: error(
        "`MAX_SESSIONS` sessions are alive (the seed's answer), or the session store cannot "
        "be used.",
        RETRY_AFTER,
        capacity=("MAX_SESSIONS", "Maximum number of sessions reached (10)"),
        store=STORE_EXAMPLE,
    ),
}
LIST: Responses = {200: success("Every live session.", SESSION_LIST_EXAMPLE)}
GET: Responses = {
    200: success("The session's state.", SESSION_EXAMPLE),
    404: NOT_FOUND,
    422: validation(long_id=("a session id over 64 characters", VALIDATION_PATH)),
}
DELETE: Responses = {
    204: {"description": "Ended: its WebSockets are closed (4410); no body."},
    404: NOT_FOUND,
    422: validation(long_id=("a session id over 64 characters", VALIDATION_PATH)),
}
HEALTH: Responses = {200: success("The gateway answers.", HEALTH_EXAMPLE)}

# Examples for error responses a route declares without one (see fill_examples).
FALLBACK = {
    "401": UNAUTHORIZED,
    "404": NOT_FOUND,
    "413": BODY_TOO_LARGE,
    "429": RATE_LIMITED,
    "503": STORE_UNAVAILABLE,
}


def has_example(response: dict[str, Any]) -> bool:
    """Whether an OpenAPI response object shows an example of each of its media types."""
    content = response.get("content") or {}
    return all("example" in media or "examples" in media for media in content.values())


def fill_examples(openapi: dict[str, Any]) -> dict[str, Any]:
    """Give each error response that has no example the one :data:`FALLBACK` has for its
    status (a limit or check another module adds to a route keeps its own description)."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                fallback = FALLBACK.get(status)
                if fallback is None or (response.get("content") and has_example(response)):
                    continue
                media = fallback["content"][JSON]
                response.setdefault("content", {}).setdefault(JSON, {}).update(
                    {"examples": media["examples"]}
                )
                response["content"][JSON].setdefault(
                    "schema", {"$ref": "#/components/schemas/ErrorDetail"}
                )
                for name, header in fallback.get("headers", {}).items():
                    response.setdefault("headers", {}).setdefault(name, header)
    return openapi
