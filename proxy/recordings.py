"""GET /trajhub/recordings/<run_id>: one run's recordings file, for workers on other machines.

A Celery worker (trajhub_assets/deploy/celery/) reads each run it made from the proxy that
recorded it, rather than from a directory shared with the proxy's host. The route is on only
when the proxy has TRAJHUB_RECORDINGS_KEY, and takes that key alone: agents in sandboxes hold
the master key, and must not read other runs' recordings.
"""

from __future__ import annotations

import hmac
import os
import re

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

KEY_ENV = "TRAJHUB_RECORDINGS_KEY"
_RUN_ID = re.compile(r"[A-Za-z0-9_.~-]+")  # a file name under the recordings directory, nothing above it

router = APIRouter()


@router.get("/trajhub/recordings/{run_id}")
async def recording(run_id: str, request: Request) -> Response:
    key = os.environ.get(KEY_ENV)
    if not key:
        return Response(f"this proxy serves no recordings ({KEY_ENV} is not set)", status_code=403)
    sent = request.headers.get("authorization", "").removeprefix("Bearer ")
    if not hmac.compare_digest(sent.encode(), key.encode()):
        return Response("the recordings key is required", status_code=401)
    if not _RUN_ID.fullmatch(run_id) or run_id.startswith("."):
        return Response(f"not a run id: {run_id!r}", status_code=400)
    from forwarding import recorder  # beside this file, on sys.path since main()

    logger = recorder()
    path = logger.writer.path(run_id) if logger is not None else None
    if path is None or not path.is_file():
        return Response(f"no recordings of run {run_id}", status_code=404)
    return FileResponse(path, media_type="application/x-ndjson")


def install(app) -> None:
    """Ahead of litellm's routes, as forwarding.install does."""
    app.router.routes[:0] = router.routes
