"""The `bedrock` upstream: Amazon Bedrock `ConverseStream`, reached with the function's own IAM role.

botocore serializes the request, resolves the endpoint and signs it (SigV4, service `bedrock`); the relay's httpx
client sends it, so a cancel closes the connection at once and timeouts and retries are the same as for every
other kind. The hand-over uses botocore's `before-send` event, emitted with the prepared, signed request just
before botocore would send it: a handler raises `_Captured` carrying that request, botocore's endpoint catches it
as a failed send, does not retry it (nothing here is a retryable error, and the client allows one attempt) and
re-raises it from `converse_stream`, where it is caught. No request ever leaves through botocore.

This module (and boto3's `bedrock-runtime` client) is loaded only for a table with a Bedrock upstream, and then at
start-up (`start`), so a relay without one pays nothing for it at cold start, and one with it pays in init, where a
SnapStart snapshot keeps it.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from ..errors import InvalidRequest, UpstreamError
from .base import UpstreamRequest
from .bedrock_events import FINISH_REASONS, BedrockDecoder
from .bedrock_request import converse_params

if TYPE_CHECKING:
    from botocore.awsrequest import AWSPreparedRequest

__all__ = ["FINISH_REASONS", "BedrockDecoder", "BedrockDialect", "converse_params"]

logger = logging.getLogger(__name__)

_EVENT = "before-send.bedrock-runtime.ConverseStream"
_HANDLER_ID = "llm-relay-capture-converse-stream"
_PARAMETER = re.compile(r"parameter ([\w.\[\]]+)")


class _Captured(Exception):  # not an error: how the signed request leaves botocore
    def __init__(self, request: AWSPreparedRequest) -> None:
        super().__init__("captured")
        self.request = request


def _capture(request: AWSPreparedRequest, **_: Any) -> None:
    raise _Captured(request)


class BedrockDialect:
    """ConverseStream on one Bedrock runtime endpoint. `client` is an injected `bedrock-runtime` client (tests, or a
    shared session); without one a client is built once, at start-up (`start`), from the default credential
    chain, and again after a SnapStart restore (`renew`)."""

    kind = "bedrock"

    def __init__(self, region: str | None, endpoint_url: str | None = None, client: Any | None = None) -> None:
        self._region = region
        self._endpoint_url = endpoint_url
        self._client = client
        self._built = False  # whether `_client` was built here (then `renew` may drop it)
        self._lock = threading.Lock()
        self._registered = False

    async def request(self, body: dict[str, Any], model: str, request_id: str) -> UpstreamRequest:
        params = converse_params(body, model)
        prepared = await anyio.to_thread.run_sync(self._prepare, params)
        headers = {name: _text(value) for name, value in prepared.headers.items()}
        headers["x-request-id"] = request_id  # after signing: unsigned, and the upstream ignores it
        headers["accept-encoding"] = "identity"
        return UpstreamRequest(url=prepared.url, headers=headers, content=_body(prepared.body))

    def decoder(self, model: str, created: int) -> BedrockDecoder:
        return BedrockDecoder(model, created)

    def start(self) -> None:
        """Build the client at start-up: its cost (boto3's service model, the endpoint) falls in init, where a
        SnapStart snapshot keeps it, not in a request; and a missing region refuses the start (ValueError)."""
        from botocore.exceptions import BotoCoreError, NoRegionError

        try:
            client = self._ready_client()
        except NoRegionError:
            raise ValueError("no region: set the upstream's region (or AWS_REGION)") from None
        except BotoCoreError as exc:  # e.g. an AWS_PROFILE that does not exist
            raise ValueError(f"the Bedrock client cannot be built: {exc}") from None
        if not hasattr(client, "converse_stream"):  # a runtime's boto3 older than ConverseStream (mid-2024)
            raise ValueError(
                "this boto3's bedrock-runtime client has no ConverseStream (added in mid-2024): "
                "a newer boto3 is needed (bundle one in the layer if the runtime's is older)"
            )

    def renew(self) -> None:
        """After a SnapStart restore: the client built during init holds credentials resolved then (and shared
        by every restored copy): a new one is built now, before any request. An injected client is the caller's."""
        with self._lock:
            if self._built:
                self._client, self._built, self._registered = None, False, False
        self.start()

    def _prepare(self, params: dict[str, Any]) -> AWSPreparedRequest:
        """The signed request for `params` (in a worker thread: signing reads credentials, which may block)."""
        from botocore.exceptions import NoCredentialsError, ParamValidationError

        client = self._ready_client()
        try:
            client.converse_stream(**params)
        except _Captured as captured:
            return captured.request
        except ParamValidationError as exc:
            report = str(exc.kwargs.get("report", exc))
            found = _PARAMETER.search(report)
            raise InvalidRequest(
                f"The Bedrock upstream refuses the request: {report.strip()}",
                param=found.group(1) if found else None,
            ) from None
        except NoCredentialsError:
            raise UpstreamError("Bedrock credentials are not available to the relay.") from None
        raise RuntimeError("botocore sent a ConverseStream request without emitting before-send")

    def _ready_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _build_client(self._region, self._endpoint_url)
                self._built = True
            if not self._registered:
                self._client.meta.events.register(_EVENT, _capture, unique_id=_HANDLER_ID)
                self._registered = True
            return self._client


def _build_client(region: str | None, endpoint_url: str | None) -> Any:
    import boto3.session
    from botocore.config import Config

    # One attempt: retries are the relay's own, and botocore never sends anything anyway.
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.session.Session().client(
        "bedrock-runtime", region_name=region, endpoint_url=endpoint_url, config=config
    )


def _body(body: object) -> bytes:
    """The serialized JSON body (botocore gives ConverseStream's as bytes; a str would be its UTF-8)."""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    raise TypeError(f"unexpected ConverseStream body {type(body).__name__}")


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
