"""The ``edgefit`` console script: ``serve`` and ``store build|specialize|add|evaluate|list|plot``.

This module holds ``serve`` and the wiring; the store commands live in ``service.store_cli``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from model_store.store import StoreError
from service.store_cli import add_store_commands, run_store_command


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from service.app import create_app
    from service.connections import protocol_class, raise_fd_limit
    from service.observability import configure_access_log
    from service.runtime.memory import limit_malloc_arenas
    from service.settings import Settings

    limit_malloc_arenas()
    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "store_dir": args.store,
            "workers": args.workers,
            "threads": args.threads,
            "variants": args.variants,
            "connection_limit": args.connection_limit,
            "header_timeout_seconds": args.header_timeout,
            "cascade": args.cascade,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    configure_access_log()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the app writes one structured line per request itself
        # The head deadline and the connection cap (answered 503 + Retry-After, not reset).
        http=protocol_class(settings, raise_fd_limit()),
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=settings.drain_seconds,
    )

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Readiness goes 503 at once; uvicorn then stops accepting and lets requests finish.
            plane = getattr(app.state, "plane", None)
            if plane is not None:
                plane.draining = True
            super().handle_exit(sig, frame)

    # uvicorn re-raises the signal it stopped for once it has drained; a drained stop is a
    # success, so make that re-raised SIGTERM/SIGINT end the process with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    DrainingServer(config).run()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="edgefit", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the store over HTTP")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--store", help="store directory (EDGEFIT_STORE_DIR)")
    serve.add_argument("--workers", type=int, help="parallel inferences (EDGEFIT_WORKERS)")
    serve.add_argument("--threads", type=int, help="onnxruntime threads per inference (EDGEFIT_THREADS)")
    serve.add_argument("--variants", help="comma-separated subset to serve (EDGEFIT_VARIANTS)")
    serve.add_argument(
        "--connection-limit",
        type=int,
        help="open connections held at most (EDGEFIT_CONNECTION_LIMIT; default from the descriptor limit)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        help="seconds to receive the request head (EDGEFIT_HEADER_TIMEOUT_SECONDS, default 10)",
    )
    serve.add_argument(
        "--cascade",
        action=argparse.BooleanOptionalAction,
        help="plan and offer confidence cascades among the served variants (EDGEFIT_CASCADE, default on)",
    )
    serve.set_defaults(run=cmd_serve)

    add_store_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # onnxruntime's quantiser logs chatter on the root logger at INFO: show only ours.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("model_store", "service"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        if args.command == "store":
            run_store_command(args)
        else:
            args.run(args)
    except StoreError as exc:
        print(f"edgefit: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
