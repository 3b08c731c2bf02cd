"""The ``xsp`` command: Faust's command line with xsp's own commands added.

``xsp worker`` is Faust's worker for the app that ``Settings.from_env()``
describes; ``xsp kafka``, ``xsp topics``, ``xsp send`` and ``xsp dev`` are
plain click commands on the same command group. They are not Faust
``AppCommand``s on purpose: those run inside a mode Worker that logs every
user mistake with a traceback, where we want one line and exit code 2. No
command prints a traceback for a mistake a user can make.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from streams.app import XspApp, create_app
from streams.kafka_io import create_topics, create_xsp_topics, produce
from streams.kafka_local import (
    KafkaLaunchError,
    LocalKafka,
    broker_answers,
    install_kafka,
    read_broker_info,
    stop_recorded,
)
from streams.local_state import DataDirInUse
from streams.records import AdRequest, ContractError, encode
from streams.settings import Settings, SettingsError

__all__ = ["main"]

DEFAULT_KAFKA_DIR = Path(".xsp/kafka")


class UserError(click.ClickException):
    """A mistake the user can fix; shown as one line, exit code 2."""

    exit_code = 2


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``xsp`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        _fail(str(exc))
    # Faust's own commands register on import; ours come after so that
    # `xsp send` is ours, not Faust's generic one.
    from faust.cli.faust import cli

    app = create_app(settings)
    for command in COMMANDS:
        cli.add_command(command)
    if (
        args
        and args[0] == "worker"
        and not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in args)
    ):
        # The worker logs at XSP_LOG_LEVEL (streams/faust_worker.py keeps
        # Faust's spinner from lowering the root logger to DEBUG).
        args += ["--loglevel", settings.log_level]
    if args and args[0] == "worker" and "--help" not in args:
        # Faust creates only the last level of its data dir.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            discarded = app.open_local_tables()
        except DataDirInUse as exc:
            _fail(str(exc))
        if discarded:
            click.echo(
                "xsp: the last worker on this data dir did not shut down cleanly: "
                "its table stores are rebuilt from the changelogs",
                err=True,
            )
        _ensure_topics(app)
    if args and args[0] == "worker" and not settings.web_enabled and "--without-web" not in args:
        args.append("--without-web")

    if not args or args[0] != "worker":
        # Client commands: aiokafka logs routine retries (a new topic's
        # leader moving into place) as warnings that only alarm a user.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("aiokafka").setLevel(logging.ERROR)
    app.finalize()
    app.worker_init()
    try:
        cli.main(args=args, prog_name="xsp", standalone_mode=False, app=app)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "xsp"
        _fail(f"{command}: {exc.format_message()} (see --help)")
    except click.ClickException as exc:
        _fail(exc.format_message(), code=exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)


def _ensure_topics(app: XspApp) -> None:
    """Create the topology's topics before a worker starts.

    A topic that some client touched first would be auto-created by the
    broker with its default partition count, and tables need every source
    topic to have ``XSP_PARTITIONS`` partitions (co-partitioning). The
    tables' changelogs are created here too, and waited for until they have
    leaders: when Faust created them itself, the consumer's metadata could
    still list a new changelog with 0 partitions as the first events
    arrived, and Faust's partition check then failed the first table write
    of the first worker of a deployment (a benchmark's warm-up request was
    dead-lettered with ``PartitionsMismatch``).
    """
    settings = app.xsp_settings
    if broker_answers(settings.bootstrap_servers, timeout_s=5.0):
        names = app.xsp_topics.names
        changelogs = app.xsp_tables.changelog_topics()
        asyncio.run(
            create_topics(
                settings.bootstrap_servers,
                [*names.all(), *changelogs],
                partitions=settings.partitions,
                compacted=names.compacted() | set(changelogs),
            )
        )


def _fail(message: str, *, code: int = 2) -> None:
    click.echo(f"xsp: error: {message}", err=True)
    sys.exit(code)


def _app() -> XspApp:
    """The app built by ``main`` (Faust's root context carries it)."""
    root = click.get_current_context().find_root()
    return root.app  # type: ignore[attr-defined, no-any-return]


@click.command()
@click.argument("action", type=click.Choice(["install", "start", "stop", "status"]))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_KAFKA_DIR,
    show_default=True,
    help="Broker storage and state.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def kafka(action: str, data_dir: Path, as_json: bool) -> None:
    """Install, start, stop or show the local Apache Kafka broker (no Docker)."""
    _emit(_kafka_action(action, data_dir), as_json)


@click.command()
@click.argument("action", type=click.Choice(["create", "list"]))
@click.option("--partitions", type=click.IntRange(min=1), default=None, help="Partitions.")
def topics(action: str, partitions: int | None) -> None:
    """Create (or list) every topic of the xsp topology on the configured broker."""
    app = _app()
    names = app.xsp_topics.names
    if action == "list":
        for name in names.all():
            click.echo(name)
        return
    settings = app.xsp_settings
    _require_broker(settings.bootstrap_servers)
    created = asyncio.run(
        create_xsp_topics(
            settings.bootstrap_servers, names, partitions=partitions or settings.partitions
        )
    )
    listed = f": {', '.join(created)}" if created else ""
    click.echo(f"created {len(created)} topics{listed}")


@click.command()
@click.option("--user", "user_id", default="user-1", show_default=True, help="User id.")
@click.option("--campaign", "campaign_id", default=None, help="Campaign hint.")
@click.option("--request-id", default=None, help="Request id (default: random).")
@click.option("--reply-to", default=None, help="Topic for the decision.")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--file",
    "json_file",
    type=click.File("rb"),
    default=None,
    help="Send this AdRequest JSON (one object, or one per line; '-' for stdin).",
)
@click.option("--raw", default=None, help="Send these bytes unvalidated (to test the DLQ).")
def send(
    user_id: str,
    campaign_id: str | None,
    request_id: str | None,
    reply_to: str | None,
    count: int,
    json_file: Any,
    raw: str | None,
) -> None:
    """Produce AdRequest events to the ad-requests topic."""
    app = _app()
    items = _requests_to_send(user_id, campaign_id, request_id, reply_to, count, json_file, raw)
    bootstrap = app.xsp_settings.bootstrap_servers
    _require_broker(bootstrap)
    topic = app.xsp_topics.names.ad_requests
    asyncio.run(produce(bootstrap, topic, items))
    click.echo(f"sent {len(items)} message(s) to {topic}")


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=1, max=3600),
    default=20.0,
    show_default=True,
    help="Seconds of demo traffic.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=1, max=5000),
    default=40.0,
    show_default=True,
    help="Ad requests per second.",
)
@click.option("--users", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def dev(duration: float, rate: float, users: int, as_json: bool) -> None:
    """Local Kafka + mock ad server + worker + campaigns + traffic, then a summary."""
    from streams.demo import run_demo

    code = run_demo(
        _app().xsp_settings, duration_s=duration, rate=rate, users=users, as_json=as_json
    )
    sys.exit(code)


@click.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--max-hops", type=click.IntRange(min=1, max=20), default=5, show_default=True)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Total deadline in seconds.",
)
@click.option(
    "--allow-private",
    is_flag=True,
    help="Allow loopback/private addresses (SSRF guard off; for local servers).",
)
def resolve(url: str, as_json: bool, max_hops: int, timeout_s: float, allow_private: bool) -> None:
    """Resolve a VAST tag URL (wrapper chain to inline) without Kafka and print the outcome."""
    from streams.resolve_cmd import resolve_command

    if not url.startswith(("http://", "https://")):
        raise UserError(f"URL must start with http:// or https://, got {url!r}")
    code = asyncio.run(
        resolve_command(
            url,
            as_json=as_json,
            max_hops=max_hops,
            timeout_s=timeout_s,
            allow_private=allow_private,
        )
    )
    sys.exit(code)


@click.command("mock-adserver")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8089, show_default=True)
@click.option(
    "--vast-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Serve these VAST files under /vast/.",
)
def mock_adserver(port: int, vast_dir: Path | None) -> None:
    """Run the loopback mock VAST ad server (chains /wrapper/N, /inline, knobs) until Ctrl-C."""
    from streams.mock_adserver import run_mock_adserver

    run_mock_adserver("127.0.0.1", port, vast_dir)


@click.command()
@click.argument("action", type=click.Choice(["put", "list"]))
@click.argument("source", type=click.File("rb"), required=False)
@click.option("--json", "as_json", is_flag=True, help="list: print JSON lines.")
def campaigns(action: str, source: Any, as_json: bool) -> None:
    """Put campaign configs (FILE or '-': one JSON object, a list, or JSON lines) or list them."""
    from streams.campaign_admin import list_campaigns, put_campaigns

    app = _app()
    bootstrap = app.xsp_settings.bootstrap_servers
    names = app.xsp_topics.names
    if action == "put":
        if source is None:
            raise UserError("campaigns put needs a FILE argument (or '-' for stdin)")
        _require_broker(bootstrap)
        try:
            stored = asyncio.run(put_campaigns(bootstrap, names, source.read()))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        click.echo(f"stored {len(stored)} campaign(s): {', '.join(stored)}")
        return
    _require_broker(bootstrap)
    for line in asyncio.run(list_campaigns(bootstrap, names, as_json=as_json)):
        click.echo(line)


@click.command()
@click.option(
    "--app-id",
    "replay_app_id",
    default=None,
    help="App id of the rebuilt tables (default: <XSP_APP_ID>-replay-<time>).",
)
@click.option(
    "--from-timestamp",
    "from_timestamp_ms",
    type=click.IntRange(min=0),
    default=None,
    help="Start from the first events at or after this time (ms since epoch).",
)
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=1), default=300.0, show_default=True
)
@click.option("--no-compare", is_flag=True, help="Do not compare with the live tables.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def replay(
    replay_app_id: str | None,
    from_timestamp_ms: int | None,
    timeout_s: float,
    no_compare: bool,
    as_json: bool,
) -> None:
    """Rebuild the tables from the topics under a new app id; report catch-up and differences."""
    import tempfile
    from dataclasses import asdict

    from streams.replay import run_replay

    settings = _app().xsp_settings
    _require_broker(settings.bootstrap_servers)
    new_id = replay_app_id or f"{settings.app_id}-replay-{int(time.time())}"
    with tempfile.TemporaryDirectory(prefix="xsp-replay-") as tmp:
        report = run_replay(
            settings,
            replay_app_id=new_id,
            workdir=Path(tmp),
            timeout_s=timeout_s,
            from_timestamp_ms=from_timestamp_ms,
            compare=not no_compare,
            progress=not as_json,
        )
    if as_json:
        click.echo(json.dumps({**asdict(report), "identical": report.identical}, sort_keys=True))
    else:
        state = "caught up" if report.caught_up else "NOT caught up"
        click.echo(
            f"replay {report.replay_app_id}: {state} after {report.seconds} s, "
            f"{report.events} events"
        )
        for table, counts in report.tables.items():
            click.echo(
                f"  {table:<10} live {counts['live_keys']} keys, replay "
                f"{counts['replay_keys']} keys, {counts['differing']} differ"
            )
    if not report.caught_up or (report.tables and not report.identical):
        sys.exit(1)


def _lag_command() -> click.Command:
    from streams.lag import lag_command

    return lag_command


COMMANDS: list[click.Command] = [
    kafka,
    topics,
    send,
    dev,
    resolve,
    mock_adserver,
    campaigns,
    replay,
    _lag_command(),
]


def _kafka_action(action: str, data_dir: Path) -> dict[str, Any]:
    try:
        if action == "install":
            return {"installed": str(install_kafka())}
        if action == "status":
            info = read_broker_info(data_dir)
            if info is None:
                return {"running": False, "data_dir": str(data_dir)}
            running = broker_answers(info.bootstrap_servers)
            return {
                "running": running,
                "bootstrap_servers": info.bootstrap_servers,
                "pid": info.pid,
            }
        if action == "stop":
            return {"stopped": stop_recorded(data_dir)}
        info = read_broker_info(data_dir)
        if info is not None and broker_answers(info.bootstrap_servers):
            return {
                "running": True,
                "bootstrap_servers": info.bootstrap_servers,
                "pid": info.pid,
                "note": "already running",
            }
        started = LocalKafka(data_dir, attached=False).start()
        return {
            "running": True,
            "bootstrap_servers": started.bootstrap_servers,
            "pid": started.pid,
            "started_in_s": started.started_in_s,
            "hint": f"export XSP_BOOTSTRAP_SERVERS={started.bootstrap_servers}",
        }
    except KafkaLaunchError as exc:
        raise click.ClickException(str(exc)) from None


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    for key, value in result.items():
        click.echo(f"{key}: {value}")


def _require_broker(bootstrap: str) -> None:
    if not broker_answers(bootstrap, timeout_s=3.0):
        raise click.ClickException(
            f"no Kafka broker answers at {bootstrap} "
            "(start one with `xsp kafka start` and set XSP_BOOTSTRAP_SERVERS)"
        )


def _requests_to_send(
    user_id: str,
    campaign_id: str | None,
    request_id: str | None,
    reply_to: str | None,
    count: int,
    json_file: Any,
    raw: str | None,
) -> list[tuple[bytes | None, bytes | None]]:
    if raw is not None and json_file is not None:
        raise UserError("--raw and --file cannot be used together")
    if raw is not None:
        return [(user_id.encode(), raw.encode())] * count
    if json_file is not None:
        return [_parse_request_line(line) for line in _json_documents(json_file.read())]
    if request_id is not None and count > 1:
        raise UserError("--request-id names one request; it cannot be used with --count > 1")
    now_ms = int(time.time() * 1000)
    items = []
    for _ in range(count):
        request = AdRequest(
            request_id=request_id or f"req-{uuid.uuid4().hex[:12]}",
            user_id=user_id,
            timestamp=now_ms,
            correlator=uuid.uuid4().hex,
            cachebusting=uuid.uuid4().hex[:10],
            params={"campaign_id": campaign_id} if campaign_id else {},
            reply_to=reply_to,
        )
        items.append((request.user_id.encode(), encode(request)))
    return items


def _json_documents(data: bytes) -> list[bytes]:
    text = data.strip()
    if not text:
        raise UserError("the file is empty")
    if text.startswith(b"{") and b"\n{" not in text:
        return [text]
    return [line for line in text.splitlines() if line.strip()]


def _parse_request_line(line: bytes) -> tuple[bytes, bytes]:
    from streams.records import decode

    try:
        request = decode(AdRequest, line)
    except ContractError as exc:
        raise UserError(f"invalid AdRequest in file: {exc}") from None
    return request.user_id.encode(), encode(request)
