"""The service's subcommands of `alignment` (serve, tokens, submit, worker).

alignment tokens create --scope submit|read|admin [--name NAME] [--db URL]   # prints the token once
alignment tokens revoke NAME [--db URL]         alignment tokens list [--db URL]
alignment serve [--config service.yaml] [--db URL] [--host H] [--port P]
alignment submit FILE --dataset NAME [--url URL] [--token T | $ALIGNMENT_TOKEN] [--batch-size 100]
alignment worker [--config service.yaml] [--db URL] [--once]
"""

from __future__ import annotations

import argparse
import os
import sys

COMMANDS: tuple[str, ...] = ("serve", "tokens", "submit", "worker")


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", help="store URL (sqlite:///PATH or postgresql+psycopg://...); default $ALIGNMENT_SERVICE_DB or "
        "$ALIGNMENT_HOME/service/service.db",
    )  # fmt: skip


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the service's subcommands on the `alignment` parser."""
    serve = commands.add_parser("serve", help="preference-data service: the HTTP API (OpenAPI docs at /docs)")
    serve.add_argument("--config", help="service YAML (alignment.service.settings.ServiceConfig)")
    _db_option(serve)
    serve.add_argument("--host", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, help="default 8600")
    serve.add_argument("--access-log", action="store_true", help="log every request")

    tokens = commands.add_parser("tokens", help="service API tokens: create, revoke, list")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    create = tokens_sub.add_parser("create", help="create a token and print it (shown only this once)")
    create.add_argument("--scope", required=True, choices=["read", "submit", "admin"])
    create.add_argument("--name", default=None, help="who holds it (default: <scope>-<random>)")
    _db_option(create)
    revoke = tokens_sub.add_parser("revoke", help="revoke every token of this name")
    revoke.add_argument("name")
    _db_option(revoke)
    _db_option(tokens_sub.add_parser("list", help="list tokens (names, scopes, revoked or not)"))

    submit = commands.add_parser("submit", help="submit a file of preference pairs to the service")
    submit.add_argument("file", help=".jsonl / .json of {prompt, chosen, rejected, metadata?} rows")
    submit.add_argument("--dataset", required=True)
    submit.add_argument("--url", default=os.environ.get("ALIGNMENT_SERVICE_URL", "http://127.0.0.1:8600"))
    submit.add_argument("--token", help="bearer token (default: $ALIGNMENT_TOKEN)")
    submit.add_argument("--batch-size", type=int, default=100)
    submit.add_argument("--restart", action="store_true", help="forget the progress file and send everything")

    worker = commands.add_parser("worker", help="run alignment rounds queued in the service's store")
    worker.add_argument("--config", help="service YAML (its `rounds:` section)")
    _db_option(worker)
    worker.add_argument("--once", action="store_true", help="run at most one round, then exit")
    worker.add_argument("--poll", type=float, default=5.0, help="seconds between looks for queued rounds")


def run(args: argparse.Namespace) -> int:
    """Run one of the service's subcommands."""
    if args.command == "serve":
        return _serve(args)
    if args.command == "tokens":
        return _tokens(args)
    if args.command == "submit":
        from alignment.service.client import submit_file

        token = args.token or os.environ.get("ALIGNMENT_TOKEN")
        if not token:
            print("error: give --token or set ALIGNMENT_TOKEN (a token of scope submit)", file=sys.stderr)
            return 2
        return submit_file(args.file, args.dataset, args.url, token, args.batch_size, restart=args.restart)
    if args.command == "worker":
        from alignment.service.settings import load_service_config
        from alignment.service.worker import run_worker

        config = load_service_config(args.config, db=args.db)
        return run_worker(config, once=args.once, poll_seconds=args.poll)
    raise ValueError(f"unknown service command {args.command!r}")


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from alignment.service.app import create_app
    from alignment.service.settings import load_service_config

    config = load_service_config(args.config, db=args.db, host=args.host, port=args.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = create_app(config)
    print(
        f"alignment serve: http://{config.host}:{config.port} (docs at /docs), store {_redacted(config.db)}"
    )
    sys.stdout.flush()
    uvicorn.run(app, host=config.host, port=config.port, access_log=args.access_log, log_level="info")
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _tokens(args: argparse.Namespace) -> int:
    import secrets

    from alignment.service.auth import create_token, list_tokens, revoke_token
    from alignment.service.settings import load_service_config
    from alignment.service.store import open_store

    engine = open_store(load_service_config(None, db=args.db).db)
    if args.tokens_command == "create":
        name = args.name or f"{args.scope}-{secrets.token_hex(3)}"
        token = create_token(engine, name, args.scope)
        print(token)
        print(f"# token {name!r}, scope {args.scope}: store it now, it is not shown again", file=sys.stderr)
        return 0
    if args.tokens_command == "revoke":
        count = revoke_token(engine, name=args.name)
        print(f"revoked {count} token(s) named {args.name!r}")
        return 0 if count else 1
    for row in list_tokens(engine):
        state = "revoked" if row["revoked_at"] else "active"
        print(f"{row['id']:>4}  {row['name']:<32} {row['scope']:<7} {state}")
    return 0
