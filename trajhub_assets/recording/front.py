"""One address for several proxy replicas: a round-robin TCP front.

    python -m trajhub_assets.recording.front --port 4000 127.0.0.1:4001 127.0.0.1:4002

Each client connection goes to the next replica, whole (HTTP keep-alive stays on one replica);
a replica that refuses the connection is skipped. The replicas record into one recordings
directory, so which one serves a call does not matter. This is for tests and a single host
with nothing better at hand; a deployment puts its own balancer (a Kubernetes Service, nginx,
haproxy) in front instead.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until it ends, then close the other side's writer: the peer's
    read ends, and that ends the other direction."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass  # a reset: closing below tells the other side
    finally:
        writer.close()


async def serve(host: str, port: int, backends: list[tuple[str, int]]) -> asyncio.Server:
    turn = itertools.cycle(range(len(backends)))

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        first = next(turn)
        for index in range(first, first + len(backends)):
            backend = backends[index % len(backends)]
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*backend)
                break
            except OSError as error:
                log.warning("replica %s:%s refused a connection: %s", *backend, error)
        else:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    return await asyncio.start_server(relay, host, port)


def _backend(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("backends", nargs="+", type=_backend, help="host:port of each replica")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    async def run() -> None:
        server = await serve(args.host, args.port, args.backends)
        async with server:
            await server.serve_forever()

    try:  # uvloop (litellm's loop) relays with less CPU
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    run_loop(run())


if __name__ == "__main__":
    main()
