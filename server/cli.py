"""`corral serve` and friends."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def serve(args: argparse.Namespace) -> None:
    from .app import create_app
    from .config import Settings

    settings = Settings.from_env()
    level = logging.DEBUG if os.environ.get("OLLAMA_DEBUG") else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != logging.DEBUG:
        logging.getLogger("llama.cpp").setLevel(logging.WARNING)
    app = create_app(settings)
    import uvicorn

    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                http="httptools", loop="uvloop", timeout_keep_alive=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="corral", description="Ollama-compatible server on llama.cpp")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start the server (OLLAMA_HOST, default 127.0.0.1:11434)").set_defaults(func=serve)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
