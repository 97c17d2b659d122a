"""The ``janus-bot`` command.

Every subcommand imports its implementation lazily, so ``janus-bot --help`` and the bot-facing commands
start fast and never pull torch into a process that does not need it (the logging set-up comes from
:mod:`bot.launcher`, whose own heavy imports wait for its commands).

Exit status 2 and one line on stderr, never a traceback, for:

- a usage error (argparse's message in one line, without the multi-line usage; ``--device`` is checked
  here, at parse time);
- errors this package raises on purpose (``JanusError``, ``ConfigError``), which carry the readable
  message: handlers check their inputs and raise these rather than let an OSError or a driver error out;
- as a last resort, any other exception: ``janus-bot CMD: unexpected error: Type: message (run with -v
  for the traceback)``; the traceback is logged at debug level, so ``-v`` shows it.

Ctrl-C is "interrupted" and 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from bot.config import ConfigError
from bot.launcher import setup_logging
from janus_engine.errors import JanusError
from janus_engine.protocol import DEFAULT_MODEL, DEFAULT_QUESTION

DB_DESCRIPTION = """\
Alembic migrations of the bot's database (the URL of --url, else [database] url of --config or of
./config.toml; a relative SQLite path is relative to the config file's folder).

  upgrade [REV]        bring the schema to REV (default head); creates the SQLite file, never its folder
  downgrade REV        go back to REV (-1, an id, or base = drop every table); this destroys data, so it
                       asks you to type yes on a terminal, and needs --yes when there is none (scripts).
                       Before changing anything it writes a backup of a SQLite file next to it,
                       e.g. janus-bot.db.backup-20261203T174500Z, and prints its path (restore: stop the
                       bot, move the backup over the file). For PostgreSQL no backup is made: use pg_dump.
  current              show the revision; read-only, creates nothing
  copy-to TARGET       copy every row into the empty database TARGET (e.g. SQLite -> PostgreSQL:
                       postgresql+asyncpg://USER:PASSWORD@HOST/DB), migrating it first; same ids, one
                       transaction, a row-count check per table before the commit. Stop the bot first.

Bad input (unknown revision, missing file, not a database, wrong driver) ends with one line, exit 2.
"""


def device_arg(text: str) -> str:
    """``--device``: exactly the forms the config's ``[engine] devices`` accepts (cpu, cuda, cuda:N, mps,
    auto; :func:`janus_engine.devices.parse_device`, torch-free), refused at parse time instead of after a
    worker started."""
    from janus_engine.devices import parse_device

    try:
        return parse_device(text)
    except JanusError as exc:
        raise argparse.ArgumentTypeError(getattr(exc, "user_message", str(exc))) from None


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage of a subcommand wraps over several)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_model_args(p: argparse.ArgumentParser, *, default_model: str | None = DEFAULT_MODEL) -> None:
    p.add_argument("--model", default=default_model, help="hub id or local directory (default: %(default)s)")
    p.add_argument(
        "--device",
        type=device_arg,
        default=None,
        help="auto, cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)",
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="janus-bot", description="A self-hosted Discord bot for DeepSeek's Janus-Pro.")
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

    p = sub.add_parser("engine", help="run the engine as its own service that bot processes share (Ray)")
    esub = p.add_subparsers(dest="engine_command", required=True, metavar="ACTION")
    serve = esub.add_parser(
        "serve",
        help="start the engine service named [engine] service on the Ray cluster at [engine] ray_address "
        "and keep it until Ctrl-C / SIGTERM",
    )
    serve.add_argument("--config", default="config.toml", help="the admin config file (default: %(default)s)")
    serve.set_defaults(handler="bot.launcher:engine_serve_command")

    p = sub.add_parser("demo", help="offline demo: Discord emulator + bot + tiny model, prints a transcript")
    p.add_argument("-o", "--output", default="demo-output", help="folder for images and the transcript")
    p.set_defaults(handler="bot.demo:demo_command")

    p = sub.add_parser("imagine", help="generate images from a prompt (through the engine)")
    p.add_argument("prompt", help="what to draw")
    p.add_argument("-n", "--count", type=int, default=1, help="images, 1-16 (default 1)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible images (default: random)")
    p.add_argument("--guidance", type=float, default=5.0, help="CFG scale, > 1 (default 5)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--negative", default="", help="what the images should not show (a negative prompt)")
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
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    p.set_defaults(handler="janus_engine.tiny:make_tiny_model_command")

    p = sub.add_parser(
        "db",
        help="database migrations (upgrade, downgrade with a backup, current, copy-to another database)",
        description=DB_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="config file whose database URL to use")
    p.add_argument("--url", default=None, help="database URL (overrides the config)")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dbsub.add_parser(
        "upgrade", help="upgrade to the newest revision (creates the database file, not its folder)"
    ).add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    down = dbsub.add_parser(
        "downgrade", help="downgrade to REV after a confirmation and a backup (drops tables and data)"
    )
    down.add_argument("revision", help="target revision: an id, -1 for one step back, or base (drops all)")
    down.add_argument("-y", "--yes", action="store_true", help="do not ask (scripts); a backup is still made")
    dbsub.add_parser("current", help="show the current revision (read-only; creates nothing)")
    p.set_defaults(handler="bot.store.migrate:db_command")
    copy = dbsub.add_parser(
        "copy-to", help="copy the whole database into an empty one (SQLite -> PostgreSQL), with a count check"
    )
    copy.add_argument(
        "target", help="URL of the empty target database, e.g. postgresql+asyncpg://u:p@host/db"
    )
    copy.set_defaults(handler="bot.store.copy:copy_command")
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
    except Exception as exc:  # the last resort: a bug or an unforeseen failure is still one line
        logging.getLogger("janus-bot").debug("janus-bot %s failed", args.command, exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"janus-bot {args.command}: unexpected error: {type(exc).__name__}: {first} "
            "(run with -v for the traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
