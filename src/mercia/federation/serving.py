"""Running a node or the hub under uvicorn, over HTTPS when a certificate is configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def serve(app: Any, *, host: str, port: int, cert: Path | None = None, key: Path | None = None,
          log_level: str = "warning") -> None:
    import uvicorn

    ssl: dict[str, Any] = {}
    if cert is not None and key is not None:
        ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    # One worker process: the node keeps its CDM and queue in this process; uvicorn's threads and
    # the node's worker thread share them.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, **ssl)
