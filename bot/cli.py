"""The ``janus-bot`` command.

Every subcommand imports its implementation lazily, so ``janus-bot --help`` and the bot-facing commands
start fast and never pull torch into a process that does not need it (the logging set-up comes from
:mod:`bot.launcher`, whose own heavy imports wait for its commands). Errors this package raises on
purpose (``JanusError`` and ``ConfigError``) end with one readable line and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from bot.config import ConfigError
from bot.launcher import setup_logging
from janus_engine.errors import JanusError
from janus_engine.protocol import DEFAULT_MODEL, DEFAULT_QUESTION


def _add_model_args(p: argparse.ArgumentParser, *, default_model: str | None = DEFAULT_MODEL) -> None:
    p.add_argument("--model", default=default_model, help="hub id or local directory (default: %(default)s)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)"
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="janus-bot", description="A self-hosted Discord bot for DeepSeek's Janus-Pro."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run", help="connect to Discord and serve (token from the env var named in the config)"
    )
    p.add_argument("--config", default="config.toml", help="the admin config file (default: %(default)s)")
    p.set_defaults(handler="bot.launcher:run_command")

    p = sub.add_parser("check", help="validate the config, the database and the model")
    p.add_argument("--config", default="config.toml", help="the admin config file (default: %(default)s)")
    p.set_defaults(handler="bot.launcher:check_command")

    p = sub.add_parser("demo", help="offline demo: Discord emulator + bot + tiny model, prints a transcript")
    p.add_argument("-o", "--output", default="demo-output", help="folder for images and the transcript")
    p.set_defaults(handler="bot.demo:demo_command")

    p = sub.add_parser("imagine", help="generate images from a prompt (through the engine)")
    p.add_argument("prompt", help="what to draw")
    p.add_argument("-n", "--count", type=int, default=1, help="images, 1-16 (default 1)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible images (default: random)")
    p.add_argument("--guidance", type=float, default=5.0, help="CFG scale, > 1 (default 5)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("-o", "--output", default=".", help="output folder (default: current)")
    _add_model_args(p)
    p.set_defaults(handler="janus_engine.cli_jobs:imagine_command")

    p = sub.add_parser("describe", help="describe one or more images (through the engine)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, GIF, BMP)")
    p.add_argument("--prompt", default=DEFAULT_QUESTION, help="the question to ask")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    p.add_argument("--temperature", type=float, default=0.1, help="0 for greedy (default 0.1)")
    p.add_argument("--seed", type=int, default=None, help="seed for a reproducible answer")
    _add_model_args(p)
    p.set_defaults(handler="janus_engine.cli_jobs:describe_command")

    p = sub.add_parser("download", help="fetch model weights ahead of time (progress bar)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="hub id (default: %(default)s)")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF's own)")
    p.set_defaults(handler="janus_engine.hub:download_command")

    p = sub.add_parser("make-tiny-model", help="write a tiny random Janus checkpoint (tests, demo)")
    p.add_argument("directory", help="folder to write the checkpoint to")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.set_defaults(handler="janus_engine.tiny:make_tiny_model_command")

    p = sub.add_parser("db", help="database migrations")
    p.add_argument("--config", default=None, help="config file whose database URL to use")
    p.add_argument("--url", default=None, help="database URL (overrides the config)")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dbsub.add_parser("upgrade", help="upgrade to the newest revision").add_argument(
        "revision", nargs="?", default="head"
    )
    dbsub.add_parser("downgrade", help="downgrade to a revision").add_argument(
        "revision", nargs="?", default="-1"
    )
    dbsub.add_parser("current", help="show the current revision")
    p.set_defaults(handler="bot.store.migrate:db_command")
    return parser


def _resolve(handler: str) -> Callable[[argparse.Namespace], int | None]:
    import importlib

    module_name, func = handler.split(":")
    return getattr(importlib.import_module(module_name), func)


def main(argv: Sequence[str] | None = None) -> int:
    # One torch thread unless told otherwise: two threads on small machines are erratic (see docs).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    known = (JanusError, ConfigError)
    try:
        return int(_resolve(args.handler)(args) or 0)
    except known as exc:
        print(f"janus-bot {args.command}: {getattr(exc, 'user_message', str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
