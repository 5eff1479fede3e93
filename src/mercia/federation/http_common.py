"""What the hub's and the nodes' HTTP APIs have in common: paths, patterns, error bodies, start and stop.

Both services answer a user's error (a `MerciaError`) with its status code and message, and a request
that does not fit the models with 422 naming the field, never echoing the input. Both start their
background thread with the app and stop it with the app.
"""

# No `from __future__ import annotations`: FastAPI reads the Annotated types of HashParam.

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Request, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from mercia.errors import MerciaError

API = "/api/v1"
HASH_PATTERN = r"^[0-9a-f]{64}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
HashParam = Annotated[str, PathParam(pattern=HASH_PATTERN, description="the package's content hash (sha256)")]


class RequestBody(BaseModel):
    """A request model: a field the API does not know is an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: Literal["ok"]


class Problem(BaseModel):
    detail: str


# The error answers every route may give, for the API's documentation.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (400, 401, 403, 404, 409, 422, 429)
}


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
