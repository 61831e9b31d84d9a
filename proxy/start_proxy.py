"""Start trajhub's LiteLLM proxy: litellm's own server, plus the recorder's middleware.

    python proxy/start_proxy.py --config proxy/litellm_config.yaml --host 127.0.0.1 --port 4000

Takes every `litellm` CLI option, `--num_workers N` too: every worker records into the same
recordings directory (trajectory_logger.py keeps no shared counter; calls are ordered when
read), and so do several proxies on other ports behind one address. Environment:
LITELLM_MASTER_KEY (clients authenticate with it), TRAJHUB_RECORDINGS_DIR (or TRAJHUB_HOME)
for the recordings, provider keys (see env.sh.example).

Why a launcher and not plain `litellm --config`: count_tokens calls reach no litellm hook,
and litellm edits its copy of the request body before any hook sees it. The middleware
added here hands each HTTP exchange to the trajectory logger, which keeps the exact body
and records what no hook saw. The routes of forwarding.py send a call whose client speaks
its route's wire format upstream unchanged (litellm's own handlers rewrite it). Plain
`litellm --config` still records every LLM call, with litellm's copy of the body (marked
`request_exact: false`), and forwards nothing as is.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from starlette.middleware import Middleware

HERE = Path(__file__).resolve().parent


class RecordingMiddleware:
    """Passes each HTTP exchange to the trajhub logger that litellm loaded from the config.

    The logger is looked up at request time: litellm loads callbacks only at startup, and
    loads its own copy of trajectory_logger.py, so importing it here would make a second,
    separate recorder.
    """

    def __init__(self, app):
        self.app = app
        self.recorder = None

    async def __call__(self, scope, receive, send):
        recorder = self.recorder or self._find_recorder()
        if recorder is None:
            return await self.app(scope, receive, send)
        await recorder.handle_http(self.app, scope, receive, send)

    def _find_recorder(self):
        from forwarding import recorder  # beside this file, on sys.path since main()

        self.recorder = recorder()
        return self.recorder


def recording_app():
    """litellm's app with trajhub's routes and the recorder's middleware added."""
    import forwarding
    import recordings
    from litellm.proxy.proxy_server import app

    forwarding.install(app)  # same wire format: the client's body goes upstream unchanged
    recordings.install(app)  # a run's recordings file, for workers on other machines
    # Innermost (after litellm's gzip middleware): the recorder sees plain response bodies.
    app.user_middleware.append(Middleware(RecordingMiddleware))
    return app


def _run_uvicorn(run, app, workers: int = 1, **options):
    if workers > 1:
        # uvicorn spawns each worker as a fresh process that imports the app by name, so the
        # app changed in this process would reach none of them: name the factory instead.
        app, options["factory"] = "start_proxy:recording_app", True
    return run(app, workers=workers, **options)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # `callbacks: trajectory_logger.instance` resolves from here when the config lives elsewhere;
    # spawned workers inherit sys.path, so they find it and this module too.
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch prices at startup

    import uvicorn
    from litellm.proxy.proxy_cli import run_server

    recording_app()  # the app litellm serves in this process (one worker; gunicorn forks it)
    uvicorn.run = functools.partial(_run_uvicorn, uvicorn.run)
    run_server.main(args=argv, prog_name="litellm")


if __name__ == "__main__":
    main()
