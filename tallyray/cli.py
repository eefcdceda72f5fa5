"""The ``tallyray`` command.

Exit codes: 0 success, 2 bad input (the message on stderr says what and where), 1 anything
else. On bad input nothing is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from tallyray import __version__
from tallyray.errors import EventError, InvalidInput, Problem, TallyrayError
from tallyray.logs import redact
from tallyray.pricing.config import PricingConfig, parse_config
from tallyray.pricing.events import Event, EventShapeError, parse_event
from tallyray.pricing.periods import period_of
from tallyray.pricing.plans import rate

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def load_config(path: str | Path) -> PricingConfig:
    """Read and validate a configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInput(f"cannot read configuration {str(path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise InvalidInput(
            f"{path}: not UTF-8 text (byte {error.start}): save it as UTF-8"
        ) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    return parse_config(raw)


def read_events(stream: BinaryIO) -> tuple[list[Event], list[int]]:
    """Events from JSON Lines, with the line number of each; every bad line is reported."""
    events: list[Event] = []
    line_numbers: list[int] = []
    problems: list[Problem] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)  # orjson also refuses bytes that are not UTF-8
            event = parse_event(
                obj, default_ts=0, default_id=f"line-{number:09d}", default_customer="preview"
            )
        except orjson.JSONDecodeError as error:
            problems.append(Problem(f"line {number}", f"not valid JSON: {error}"))
            continue
        except EventShapeError as error:
            problems.append(Problem(f"line {number}", str(error)))
            continue
        events.append(event)
        line_numbers.append(number)
    if problems:
        raise EventError.of(problems)
    return events, line_numbers


def _price(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    plan = config.plan(args.plan)
    if args.events == "-":
        events, lines = read_events(sys.stdin.buffer)
    else:
        try:
            with open(args.events, "rb") as stream:
                events, lines = read_events(stream)
        except OSError as error:
            raise InvalidInput(f"cannot read events {args.events!r}: {error.strerror}") from None
    usage = config.meters.fold(events, label=lambda i: f"line {lines[i]}")
    if events:  # one period: the one the first event falls in (weighted_sum holds to its end)
        usage.end = period_of(min(e[3] for e in events), plan.interval).end
    unmetered = sorted({e.type for e in events} - config.meters.event_types())
    if unmetered:
        print(f"note: no meter counts events of type {', '.join(unmetered)}", file=sys.stderr)
    return rate(plan, usage, config.meters.meters, config.rounding).to_json()


def _check_config(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    from tallyray.cluster.wiring import read_config

    _, customers = read_config(args.config)
    return {
        "ok": True,
        "meters": sorted(config.meters.meters),
        "plans": sorted(config.plans),
        "customers": sorted(record.id for record, *_ in customers),
    }


def _settings(args: argparse.Namespace) -> Any:
    from tallyray.cluster import Settings

    return Settings.load(
        database_url=getattr(args, "database_url", None),
        shards=getattr(args, "shards", None),
        port=getattr(args, "port", None),
        config_path=getattr(args, "config", None),
        checkpoint_seconds=getattr(args, "checkpoint_seconds", None),
    )


def _migrate(args: argparse.Namespace) -> dict[str, Any]:
    from tallyray.storage.db import make_engine, migrate

    settings = _settings(args)
    migrate(make_engine(settings.database_url))
    return {"ok": True, "database": redact(settings.database_url)}


def _midnight(value: str, flag: str) -> int:
    """A ``--from``/``--to`` bound: a date, or a timestamp at midnight UTC (exports replace
    whole days, so a bound inside a day would replace that day with part of it)."""
    from tallyray.pricing.events import parse_timestamp

    try:
        ts = parse_timestamp(value if "T" in value else f"{value}T00:00:00Z")
    except ValueError as error:
        raise InvalidInput(f"{flag} {value!r}: {error}") from None
    if ts % (86_400 * 1_000_000):
        raise InvalidInput(f"{flag} {value!r}: give a date (YYYY-MM-DD); exports are whole days")
    return ts


def _events_export(args: argparse.Namespace) -> dict[str, Any]:
    from tallyray.storage.db import make_engine
    from tallyray.storage.export import export_events

    start, end = _midnight(args.start, "--from"), _midnight(args.end, "--to")
    if end <= start:
        raise InvalidInput("--to must be after --from (it is exclusive)")
    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        done = export_events(engine, start, end, Path(args.out))
    finally:
        engine.dispose()
    return {"rows": done.rows, "days": list(done.days), "out": str(Path(args.out).resolve())}


def _events_maintain(args: argparse.Namespace) -> dict[str, Any]:
    from tallyray.cluster import prepare_store
    from tallyray.cluster.wiring import maintain_event_log

    settings = _settings(args)
    engine = prepare_store(settings).engine
    try:
        return maintain_event_log(settings, engine)
    finally:
        engine.dispose()


def _key_store(args: argparse.Namespace) -> Any:
    from tallyray.cluster import prepare_store
    from tallyray.storage.keys import KeyStore

    settings = _settings(args)
    return KeyStore(prepare_store(settings).engine), settings.clock


def _cli_audit(env: str, action: str, key_id: str, at: int, summary: dict[str, Any]) -> Any:
    """The audit entry of a change made with the command line, on the database directly."""
    import getpass

    from tallyray.storage.audit import Actor, AuditEntry

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return AuditEntry(
        env, Actor("server", f"cli:{user}"), action, "api_key", key_id, at, None, summary
    )


def _keys_create(args: argparse.Namespace) -> dict[str, Any]:
    from tallyray.access import ALL_SCOPES, parse_scopes
    from tallyray.pricing.events import parse_timestamp

    keys, clock = _key_store(args)
    now = clock()
    scopes = ALL_SCOPES
    if args.scopes:
        try:
            scopes = parse_scopes([s.strip() for s in args.scopes.split(",")])
        except ValueError as error:
            raise InvalidInput(f"--scopes {error}") from None
    expires_at = None
    if args.expires_at:
        try:
            expires_at = parse_timestamp(_utc(args.expires_at))
        except ValueError as error:
            raise InvalidInput(f"--expires-at: {error}") from None
        if expires_at <= now:
            raise InvalidInput("--expires-at is not in the future")
    summary = {"name": args.name, "scopes": sorted(scopes), "expires_at": args.expires_at}
    audit = _cli_audit(args.env, "api_key.created", "", now, summary)
    key, secret = keys.create(args.env, now, args.name, scopes, expires_at, audit)
    print(f"# the key is shown once; store it now ({args.env} environment)", file=sys.stderr)
    return {**key.to_json(), "key": secret}


def _keys_list(args: argparse.Namespace) -> dict[str, Any]:
    keys, _ = _key_store(args)
    return {"keys": [k.to_json() for k in keys.list(args.env)]}


def _keys_revoke(args: argparse.Namespace) -> dict[str, Any]:
    keys, clock = _key_store(args)
    now = clock()
    known = keys.get(args.key_id)
    audit = _cli_audit(known.env, "api_key.revoked", known.id, now, {"name": known.name})
    return dict(keys.revoke(args.key_id, now, audit).to_json())


def _keys_new_admin_key(_: argparse.Namespace) -> dict[str, Any]:
    from tallyray.access import ADMIN, generate_key

    print(
        "# a new admin key: set it as TALLYRAY_ADMIN_KEY and restart the server; the key "
        "seeded before it stops working",
        file=sys.stderr,
    )
    return {"admin_key": generate_key(ADMIN)}


def _serve(args: argparse.Namespace) -> None:
    from tallyray.cluster.server import run_server

    run_server(_settings(args), demo=args.demo)


def _api(url: str, key: str, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
    """One call to the HTTP API (stdlib only: the CLI needs no HTTP client package)."""
    import urllib.error
    import urllib.request

    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            message = orjson.loads(error.read())["error"]["message"]
        except Exception:  # noqa: BLE001 — not our JSON error shape
            message = str(error)
        cls = InvalidInput if 400 <= error.code < 500 else TallyrayError
        raise cls(f"{method} {path}: HTTP {error.code}: {message}") from None
    except urllib.error.URLError as error:
        raise TallyrayError(f"cannot reach the server at {url}: {error.reason}") from None


def _reshard(args: argparse.Namespace) -> dict[str, Any]:
    """Change the shard count: on the running server (``POST /v1/admin/reshard``), or with
    ``--offline`` on the store directly, with the server stopped."""
    if args.shards < 1:
        raise InvalidInput("--shards must be at least 1")
    if not args.offline:
        import os

        url = (
            args.url
            or os.environ.get("TALLYRAY_URL")
            or f"http://127.0.0.1:{os.environ.get('TALLYRAY_PORT', '8000')}"
        )
        key = args.key or os.environ.get("TALLYRAY_ADMIN_KEY")
        if not key:
            raise InvalidInput("give the admin key: --key trk_admin_… or TALLYRAY_ADMIN_KEY")
        result: dict[str, Any] = _api(
            url, key, "POST", "/v1/admin/reshard", {"shards": args.shards}, timeout=600
        )
        return result
    from tallyray.cluster.reshard import reshard_offline
    from tallyray.storage.db import make_engine, migrate

    settings = _settings(argparse.Namespace(database_url=args.database_url))
    engine = make_engine(settings.database_url)
    migrate(engine)
    try:
        return reshard_offline(
            engine, settings.database_url, args.shards, settings.clock, settings.secrets_file
        )
    finally:
        engine.dispose()


def _utc(day_or_time: str) -> str:
    """A plain date on the command line means its start, in UTC."""
    return f"{day_or_time}T00:00:00Z" if len(day_or_time) == 10 else day_or_time


def _server(args: argparse.Namespace) -> tuple[str, str]:
    """The server's URL and the API key to call it with, from the flags or the environment."""
    import os

    url = (
        args.url
        or os.environ.get("TALLYRAY_URL")
        or (f"http://127.0.0.1:{os.environ.get('TALLYRAY_PORT', '8000')}")
    )
    key = args.key or os.environ.get("TALLYRAY_API_KEY")
    if not key:
        raise InvalidInput("give an API key: --key trk_… or TALLYRAY_API_KEY")
    return url, key


def _invoice_run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    url, key = _server(args)
    if args.resume:
        run = _api(url, key, "POST", f"/v1/invoice-runs/{args.resume}/resume")
    else:
        body: dict[str, Any] = {"force": bool(args.force)}
        if args.until:
            body["until"] = _utc(args.until)
        if args.draft:
            body["finalize"] = False
        run = _api(url, key, "POST", "/v1/invoice-runs", body)
    with tqdm(total=run["customers"] or None, unit="customer", desc=run["id"]) as bar:
        while True:
            bar.total = run["customers"] or bar.total
            bar.n = run["done"]
            bar.set_postfix(invoices=run["invoices"], errors=len(run["errors"]))
            bar.refresh()
            if run["status"] not in ("pending", "running"):
                break
            time.sleep(0.5)
            run = _api(url, key, "GET", f"/v1/invoice-runs/{run['id']}")
    if run["status"] == "failed":
        raise TallyrayError(f"invoice run {run['id']} failed; resume it with --resume {run['id']}")
    return dict(run)


def _simulate(args: argparse.Namespace) -> None:
    """Start (or resume) a simulation on the server, follow it with a progress bar, print a
    table."""
    from tqdm import tqdm

    from tallyray.simulation.table import render_table

    url, key = _server(args)
    if args.resume:
        job = _api(url, key, "POST", f"/v1/simulations/{args.resume}/resume")
    else:
        job = _api(url, key, "POST", "/v1/simulations", _simulation_body(args))
    path = f"/v1/simulations/{job['id']}"
    with tqdm(total=job["progress"]["customers"] or None, unit="customer", desc=job["id"]) as bar:
        while True:
            bar.total = job["progress"]["customers"] or bar.total
            bar.n = job["progress"]["done"]
            bar.set_postfix(errors=len(job["errors"]))
            bar.refresh()
            if job["state"] not in ("pending", "running"):
                break
            time.sleep(0.5)
            job = _api(url, key, "GET", path)
    if job["state"] in ("failed", "interrupted"):
        why = (
            f"failed: {job['errors'][-1:]}"
            if job["state"] == "failed"
            else "was interrupted: the server process driving it stopped"
        )
        raise TallyrayError(
            f"simulation {job['id']} {why}; finish it with: tallyray simulate --resume {job['id']}"
        )
    results = _api(url, key, "GET", f"{path}/results")["results"]
    print(render_table(job, results, args.top))
    print(f"CSV: {url.rstrip('/')}{path}/result.csv  report: {url.rstrip('/')}{path}/report.html")


def _simulation_body(args: argparse.Namespace) -> dict[str, Any]:
    """``POST /v1/simulations``'s body from the flags."""
    from pathlib import Path

    if not (args.plan and args.start and args.end and (args.customers or args.subscribers_of)):
        raise InvalidInput(
            "give --plan, --from, --to and --customers or --subscribers-of "
            "(or --resume SIM_ID to finish a simulation)"
        )
    plan: Any = args.plan
    if Path(args.plan).is_file():
        try:
            plan = orjson.loads(Path(args.plan).read_bytes())
        except orjson.JSONDecodeError as error:
            raise InvalidInput(f"--plan {args.plan}: not JSON: {error}") from None
    elif args.plan.endswith(".json"):
        raise InvalidInput(f"--plan {args.plan}: no such file")
    body: dict[str, Any] = {"plan": plan, "from": _utc(args.start), "to": _utc(args.end)}
    if args.customers:
        body["customers"] = [c for c in args.customers.split(",") if c]
    if args.subscribers_of:
        body["subscribers_of"] = args.subscribers_of
    return body


def _reconcile(args: argparse.Namespace) -> dict[str, Any]:
    from tallyray.invoicing.reconcile import reconcile_env
    from tallyray.pricing.events import parse_timestamp
    from tallyray.storage.billing import BillingStore
    from tallyray.storage.catalog import Catalog
    from tallyray.storage.db import make_engine

    engine = make_engine(args.database_url)
    since = 0
    if args.since:
        try:
            since = parse_timestamp(_utc(args.since))
        except ValueError as error:
            raise InvalidInput(f"--since: {error}") from None
    try:
        results = reconcile_env(
            Catalog(engine), BillingStore(engine), args.env, args.customer, since
        )
    finally:
        engine.dispose()
    differing = [r.to_json() for r in results if not r.ok]
    report = {"periods": len(results), "differing": len(differing), "differences": differing}
    if differing:
        print(json.dumps(report, indent=2))
        raise TallyrayError(
            f"{len(differing)} of {len(results)} closed periods differ from the log"
        )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallyray", description="Real-time metering and billing on Ray."
    )
    parser.add_argument("--version", action="version", version=f"tallyray {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    price = commands.add_parser(
        "price", help="rate a file of events under a plan, offline, and print the invoice preview"
    )
    price.add_argument("--config", required=True, help="tallyray.json with meters and plans")
    price.add_argument("--plan", required=True, help="the plan's key")
    price.add_argument("--events", required=True, help="JSON Lines file of events, or - for stdin")
    price.set_defaults(run=_price)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config", help="tallyray.json")
    check.set_defaults(run=_check_config)

    def store_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--database-url",
            help="SQLAlchemy URL (env TALLYRAY_DATABASE_URL; default: SQLite under ./.tallyray/)",
        )

    serve = commands.add_parser("serve", help="run the metering server (Ray + Serve)")
    serve.add_argument("--config", help="tallyray.json to load (env TALLYRAY_CONFIG)")
    serve.add_argument("--port", type=int, help="HTTP port (env TALLYRAY_PORT; default 8000)")
    serve.add_argument(
        "--shards",
        type=int,
        help="shard actors on the first start (env TALLYRAY_SHARDS; default: CPU count); "
        "afterwards the database's count (change it with `tallyray reshard`)",
    )
    serve.add_argument(
        "--checkpoint-seconds",
        type=float,
        help="checkpoint interval (env TALLYRAY_CHECKPOINT_SECONDS; default 5)",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="create a demo customer with credits and print how to try it",
    )
    store_flags(serve)
    serve.set_defaults(run=_serve)

    reshard = commands.add_parser(
        "reshard",
        help="change the shard count on existing data",
        description="Online (default): the running server drains its shards (writes answer "
        "503 + Retry-After meanwhile), hands the accounts over and starts the new set. "
        "--offline: with the server stopped, rewrite the store directly.",
    )
    reshard.add_argument("--shards", type=int, required=True, help="the new shard count")
    reshard.add_argument(
        "--offline", action="store_true", help="the server is stopped: work on the store"
    )
    reshard.add_argument("--url", help="the server (env TALLYRAY_URL; default 127.0.0.1:8000)")
    reshard.add_argument("--key", help="the admin key (env TALLYRAY_ADMIN_KEY)")
    store_flags(reshard)
    reshard.set_defaults(run=_reshard)

    migrate = commands.add_parser("migrate", help="apply the database migrations")
    store_flags(migrate)
    migrate.set_defaults(run=_migrate)

    events = commands.add_parser("events", help="the event log: export, partitions, retention")
    event_commands = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    export = event_commands.add_parser(
        "export", help="write the events of [--from, --to) as Parquet, one directory per day"
    )
    export.add_argument("--from", dest="start", required=True, help="first day (YYYY-MM-DD)")
    export.add_argument("--to", dest="end", required=True, help="day after the last (exclusive)")
    export.add_argument("--out", required=True, help="directory (date=YYYY-MM-DD/ under it)")
    store_flags(export)
    export.set_defaults(run=_events_export)
    maintain = event_commands.add_parser(
        "maintain",
        help="what the server does hourly: create this and next month's partitions, and remove "
        "events past the retention horizon (TALLYRAY_EVENT_RETENTION_DAYS), exported first to "
        "TALLYRAY_EVENT_EXPORT_DIR when set",
    )
    store_flags(maintain)
    maintain.set_defaults(run=_events_maintain)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create an API key (shown once)")
    create.add_argument("--env", required=True, choices=["live", "test"])
    create.add_argument("--name", help="a label for the key")
    create.add_argument(
        "--scopes", help="comma-separated: ingest, read, manage (default: all three)"
    )
    create.add_argument("--expires-at", help="ISO date or time after which the key is refused")
    store_flags(create)
    create.set_defaults(run=_keys_create)
    listing = key_commands.add_parser("list", help="list the keys (never their secrets)")
    listing.add_argument("--env", choices=["live", "test", "admin"])
    store_flags(listing)
    listing.set_defaults(run=_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key for good")
    revoke.add_argument("key_id", help="the key's id (key_…), as `tallyray keys list` shows")
    store_flags(revoke)
    revoke.set_defaults(run=_keys_revoke)
    admin = key_commands.add_parser(
        "new-admin-key", help="print a fresh admin key to set as TALLYRAY_ADMIN_KEY"
    )
    admin.set_defaults(run=_keys_new_admin_key)

    invoice = commands.add_parser("invoice", help="invoice runs against a running server")
    invoice_commands = invoice.add_subparsers(
        dest="invoice_command", required=True, metavar="ACTION"
    )
    run = invoice_commands.add_parser(
        "run", help="close the periods that ended by --until and invoice them, with progress"
    )
    run.add_argument("--until", help="ISO date or time (default: now less the grace window)")
    run.add_argument(
        "--force", action="store_true", help="close periods still in their grace window"
    )
    run.add_argument("--draft", action="store_true", help="leave the invoices as drafts")
    run.add_argument("--resume", metavar="RUN_ID", help="finish a run that crashed")
    run.add_argument(
        "--url", help="the server (env TALLYRAY_URL; default http://127.0.0.1:TALLYRAY_PORT)"
    )
    run.add_argument("--key", help="an API key of the environment (env TALLYRAY_API_KEY)")
    run.set_defaults(run=_invoice_run)

    simulate = commands.add_parser(
        "simulate",
        help="replay stored events under a draft plan and compare (against a running server)",
    )
    simulate.add_argument(
        "--plan", help="a draft plan's JSON file, or key@version of a stored plan"
    )
    simulate.add_argument("--from", dest="start", help="ISO date or time")
    simulate.add_argument("--to", dest="end", help="ISO date or time")
    simulate.add_argument(
        "--resume",
        metavar="SIM_ID",
        help="finish a simulation that was interrupted or failed (instead of --plan …)",
    )
    who = simulate.add_mutually_exclusive_group()
    who.add_argument("--customers", help="customer ids, comma-separated")
    who.add_argument("--subscribers-of", help="every subscriber of this plan key")
    simulate.add_argument(
        "--top", type=int, default=20, help="customers shown in the table (biggest changes)"
    )
    simulate.add_argument(
        "--url", help="the server (env TALLYRAY_URL; default http://127.0.0.1:TALLYRAY_PORT)"
    )
    simulate.add_argument("--key", help="an API key of the environment (env TALLYRAY_API_KEY)")
    simulate.set_defaults(run=_simulate)

    reconcile = commands.add_parser(
        "reconcile",
        help="recompute closed periods from the event log and compare with their checkpoints",
    )
    reconcile.add_argument("--env", choices=["live", "test"], default="live")
    reconcile.add_argument("--customer", help="only this customer")
    reconcile.add_argument("--since", help="only periods that ended after this ISO date")
    store_flags(reconcile)
    reconcile.set_defaults(run=_reconcile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.run(args)
    except InvalidInput as error:
        print(f"tallyray {args.command}: {error.describe()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TallyrayError as error:
        print(f"tallyray {args.command}: {error.describe()}", file=sys.stderr)
        return EXIT_FAILED
    if result is not None:
        print(json.dumps(result, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
