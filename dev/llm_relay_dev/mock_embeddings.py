"""The mock upstream's embeddings: OpenAI's `POST /v1/embeddings` and Ollama's native `POST /api/embed`, with
deterministic vectors and token counts, and the faults and records of the mock's chat routes.

A vector comes from a hash of its input (the same input gives the same vector in both shapes), with 8 dimensions
or the request's `dimensions`; its values are multiples of 1/128 in [-1, 1), exact in float32, so a test compares
a base64 vector with the floats exactly. The count: a token per four characters of each text, at least one (as
the chat routes count a prompt), and a token per token id.

Faults come from the body's `mock` object (the `openai` kind forwards unknown fields), else from the last input
that is `mock:` and a JSON object (the `ollama` kind refuses unknown fields, so one test drives both shapes this
way; that input is embedded and counted like any other). As on the chat routes: `status` (with `retry_after`),
`fail_first` (with `id`), and `headers_delay_ms`, which holds the whole answer back that long and notes when the
client disconnected meanwhile (a cancel mid-request). Of their own: `malformed` (a 200 whose body is not JSON),
`no_usage` (no token count) and `wrong_count` (one vector fewer than the inputs).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .mock_ndjson import OllamaShape, Shape
from .mock_upstream import MockState, RequestRecord, SSEShape, refusal

__all__ = ["DEFAULT_DIMENSIONS", "embedding_options", "embedding_routes", "mock_vector", "text_tokens"]

DEFAULT_DIMENSIONS = 8
Input = str | list[int]


def mock_vector(item: Input, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The mock's vector of one input: hash bytes as multiples of 1/128 in [-1, 1) (exact in float32)."""
    seed = (item if isinstance(item, str) else json.dumps(item)).encode()
    raw = b""
    block = 0
    while len(raw) < dimensions:
        raw += hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        block += 1
    return [(byte - 128) / 128 for byte in raw[:dimensions]]


def text_tokens(item: Input) -> int:
    """The mock's token count of one input."""
    return max(1, len(item) // 4) if isinstance(item, str) else len(item)


def embedding_options(body: dict[str, Any], inputs: list[Input]) -> dict[str, Any]:
    """The faults asked for: `body["mock"]`, else the last `mock: {...}` input; ValueError when that directive is
    not a JSON object."""
    if isinstance(body.get("mock"), dict):
        return dict(body["mock"])
    for item in reversed(inputs):
        if isinstance(item, str) and item.startswith("mock:"):
            try:
                options = json.loads(item[len("mock:") :])
            except json.JSONDecodeError:
                options = None
            if not isinstance(options, dict):
                raise ValueError("mock: the directive is not a JSON object")
            return options
    return {}


def embedding_routes(state: MockState) -> list[Route]:
    """`POST /v1/embeddings` (OpenAI's shape) and `POST /api/embed` (Ollama's), recording into `state`."""

    async def openai(request: Request) -> Response:
        return await _embed(request, state, ollama=False)

    async def ollama(request: Request) -> Response:
        return await _embed(request, state, ollama=True)

    return [
        Route("/v1/embeddings", openai, methods=["POST"]),
        Route("/api/embed", ollama, methods=["POST"]),
    ]


def _inputs(value: Any, ollama: bool) -> list[Input] | None:
    """The inputs of a body (Ollama's: texts only), or None when they are not of a shape the API takes."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        return None
    texts = all(isinstance(item, str) and item for item in items)
    ids = all(isinstance(item, list) and item and all(isinstance(v, int) for v in item) for item in items)
    return items if texts or (ids and not ollama) else None


async def _embed(request: Request, state: MockState, *, ollama: bool) -> Response:
    body = json.loads(await request.body())
    state.bodies.append(body)
    state.headers.append({k: v for k, v in request.headers.items() if k != "authorization"})
    request_id = request.headers.get("x-request-id") or f"anon-{len(state.requests)}"
    model = str(body.get("model", "mock"))
    shape: Shape = OllamaShape(model, 0, request_id) if ollama else SSEShape(model, 0, request_id)
    inputs = _inputs(body.get("input"), ollama)
    if inputs is None:
        return JSONResponse(shape.error_body("mock: invalid input", "invalid_request_error"), status_code=400)
    try:
        opts = embedding_options(body, inputs)
    except ValueError as exc:
        return JSONResponse(shape.error_body(str(exc), "invalid_request_error"), status_code=400)
    port = request.client.port if request.client else None
    record = RequestRecord(request_id=request_id, started_at=time.monotonic(), stream=False, client_port=port)
    state.requests[request_id] = record
    refused = await refusal(request, state, shape, opts, record)
    if refused is not None:
        return refused
    record.completed = True
    if opts.get("malformed"):
        return Response(b'{"data": [', media_type="application/json")
    vectors = [mock_vector(item, int(body.get("dimensions") or DEFAULT_DIMENSIONS)) for item in inputs]
    if opts.get("wrong_count"):
        vectors = vectors[:-1]
    tokens = None if opts.get("no_usage") else sum(text_tokens(item) for item in inputs)
    if ollama:
        return JSONResponse(_ollama_answer(model, vectors, tokens))
    return JSONResponse(_openai_answer(model, vectors, tokens, base64_vectors=body.get("encoding_format") == "base64"))


def _openai_answer(model: str, vectors: list[list[float]], tokens: int | None, *, base64_vectors: bool) -> Any:
    data = [
        {"object": "embedding", "index": i, "embedding": _base64(vector) if base64_vectors else vector}
        for i, vector in enumerate(vectors)
    ]
    answer: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if tokens is not None:
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return answer


def _ollama_answer(model: str, vectors: list[list[float]], tokens: int | None) -> Any:
    answer: dict[str, Any] = {"model": model, "embeddings": vectors, "total_duration": 0, "load_duration": 0}
    if tokens is not None:
        answer["prompt_eval_count"] = tokens
    return answer


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
