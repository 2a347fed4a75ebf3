"""Anthropic-shaped errors: one exception type carries status, error type and retry hints."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# The status → type pairs the Anthropic API documents; anything else maps to api_error.
STATUS_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What went wrong, as Anthropic names it: the `error` object of an error body, of a stream's
    error event and of the request log line."""

    type: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


def error_body(info: ErrorInfo, request_id: str | None = None) -> dict:
    """The Anthropic error body `{"type":"error","error":{type,message}}`; without a request id it is
    also the data of the `error` event that ends a failed stream."""
    out: dict = {"type": "error", "error": info.as_dict()}
    if request_id:
        out["request_id"] = request_id
    return out


def client_disconnected(message: str) -> ErrorInfo:
    """Why a request the client abandoned has no answer; only logged and counted, never sent."""
    return ErrorInfo("client_disconnected", message)


@dataclass
class GatewayError(Exception):
    """An error the client sees as `{"type":"error","error":{type,message}}` with `status`."""

    status: int
    message: str
    type: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.type:
            self.type = STATUS_TYPES.get(self.status, "api_error")
        super().__init__(self.message)

    @property
    def info(self) -> ErrorInfo:
        return ErrorInfo(self.type, self.message)

    def body(self, request_id: str | None = None) -> dict:
        """The JSON body of this error, as the Anthropic API shapes it."""
        return error_body(self.info, request_id)


# Anthropic error types → OpenAI's; `code` is the machine-readable reason OpenAI clients branch on.
_OPENAI_TYPES = {"not_found_error": "invalid_request_error", "request_too_large": "invalid_request_error",
                 "api_error": "server_error"}
_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large",
                 429: "rate_limit_exceeded", 529: "overloaded"}
_PARAM = re.compile(r"^([A-Za-z_][\w.]*): ")


def openai_error_body(err: GatewayError) -> dict:
    """The error as the OpenAI API shapes it: {"error": {message, type, param, code}}."""
    code = _OPENAI_CODES.get(err.status)
    if err.status == 400 and err.message.startswith("prompt is too long"):
        code = "context_length_exceeded"
    param = _PARAM.match(err.message) if err.status == 400 else None
    return {"error": {"message": err.message, "type": _OPENAI_TYPES.get(err.type, err.type),
                      "param": param.group(1) if param else None, "code": code}}


def invalid(message: str) -> GatewayError:
    """400 invalid_request_error."""
    return GatewayError(400, message)


def not_found(message: str) -> GatewayError:
    """404 not_found_error."""
    return GatewayError(404, message)


def prompt_too_long(prompt_tokens: int, context: int) -> GatewayError:
    """The 400 Claude Code recognises as a cue to compact the conversation."""
    return GatewayError(400, f"prompt is too long: {prompt_tokens} tokens > {context} maximum")
