"""What the hub's and the nodes' HTTP APIs have in common: paths, patterns, error bodies, start and stop.

Both services answer a user's error (a `MerciaError`) with its status code and message, and a request
that does not fit the models with 422 naming the field, never echoing the input. Every request body
passes `mercia.limits.json_problem` (nesting, UTF-8 text, finite numbers, 64-bit integers) and is at most
`mercia.limits.MAX_BODY_BYTES` long (413). Both start their background thread with the app and stop it
with the app.
"""

# No `from __future__ import annotations`: FastAPI reads the Annotated types of HashParam.

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Request, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mercia.errors import MerciaError
from mercia.limits import MAX_BODY_BYTES, json_problem

API = "/api/v1"
HASH_PATTERN = r"^[0-9a-f]{64}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
HashParam = Annotated[str, PathParam(pattern=HASH_PATTERN, description="the package's content hash (sha256)")]


class RequestBody(BaseModel):
    """A request model: a field the API does not know is an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _within_limits(cls, data: Any) -> Any:
        # Before any field is read: what no part of Mercia can take (a lone surrogate, NaN, a 2**70,
        # nesting past the limit) is refused here with its path, not met later as a crash.
        problem = json_problem(data)
        if problem:
            raise ValueError(problem)
        return data


class Health(BaseModel):
    status: Literal["ok"]


class Problem(BaseModel):
    detail: str


# The error answers every route may give, for the API's documentation.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (400, 401, 403, 404, 409, 413, 422, 429)
}


class BodyLimit:
    """ASGI middleware: a request body longer than `max_bytes` is answered 413 before the app reads it.

    A declared Content-Length over the limit is refused at once; a body sent without one (chunked) is
    read up to the limit and refused as soon as it passes it, so no request costs more memory than that."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"detail": f"the request body is longer than {self.max_bytes} bytes, the limit of "
                                     "this service"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._too_large(send)
                return
            await self.app(scope, receive, send)  # the server delivers no more than it declared
            return
        # No length declared: buffer up to the limit, then hand the app the same messages.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def service_lifespan(services: Service) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: `services` start when the server starts and stop when it stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.start()
        try:
            yield
        finally:
            services.stop()

    return lifespan


def install_request_limits(app: FastAPI) -> None:
    """Bodies over MAX_BODY_BYTES get 413 before any route reads them (the request models check the rest)."""
    app.add_middleware(BodyLimit)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MerciaError)
    async def _user_error(request: Request, e: MerciaError) -> JSONResponse:
        code = getattr(e, "status_code", status.HTTP_400_BAD_REQUEST)
        headers = e.headers() if hasattr(e, "headers") and callable(e.headers) else None
        return JSONResponse({"detail": str(e)}, status_code=code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # The message names the field and the problem, never echoes the input (it could be anything).
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)
