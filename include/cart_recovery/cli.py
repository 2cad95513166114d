"""The ``cart-recovery`` command line.

cart-recovery db url|start|stop|status|upgrade
cart-recovery init                 databases, migrations, Airflow metadata, dbt manifest
cart-recovery up [--port 8080]     Airflow locally until Ctrl-C (what `make up` runs)
cart-recovery env                  the environment as shell exports
cart-recovery bench [NAME ...]     benchmarks (what `make bench` runs), JSON in bench/results/
cart-recovery simulate [--seed N] [--port P]  fake shop APIs for the demo and the tests
cart-recovery webhooks [--host 127.0.0.1] [--port 8081]  the webhook service (FastAPI, uvicorn)
cart-recovery coupons load --shop ID FILE.csv | status   the coupon code pool (Ideasoft, Ticimax)
cart-recovery assistant reply --shop ID --text "..." [--cart KEY] [--json]   the assistant's answer
cart-recovery shops sync           copy the shops file into ops.shops (cart_transform does it each run)
cart-recovery airflow <args>       the Airflow CLI with the project's environment
cart-recovery dbt <args>           dbt in dbt_project/ with the project's environment
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from cart_recovery import __version__, bootstrap, settings
from cart_recovery.database import Database, embedded_server, migrate
from cart_recovery.environment import admin_credentials, project_environment
from cart_recovery.errors import CartRecoveryError

log = logging.getLogger("cart_recovery")


@contextlib.contextmanager
def running_database(*, keep_running: bool = False) -> Iterator[Database]:
    """The database in use, started if embedded; stopped afterwards if this call started it."""
    database = Database.from_env()
    started = database.start()
    try:
        yield database
    finally:
        if started and not keep_running:
            database.stop()


def _db(args: argparse.Namespace) -> int:
    database = Database.from_env()
    if args.action == "url":
        database.start()  # left running: the URL is for psql or a BI tool
        database.ensure_databases()
        print(database.url)
    elif args.action == "start":
        print("started" if database.start() else "already running", database.url)
    elif args.action == "stop":
        if not database.embedded:
            raise CartRecoveryError(
                f"{settings.DATABASE_URL_ENV} is set: the configured server is not ours to stop."
            )
        database.stop()
        print("stopped")
    elif args.action == "status":
        where = database.warehouse.render_as_string(hide_password=True)
        if database.embedded:
            state = "running" if embedded_server().is_running() else "stopped"
            print(f"embedded {where} {state}")
        else:
            print(f"configured {where}")
    elif args.action == "upgrade":
        with running_database() as db:
            db.ensure_databases()
            applied = migrate.upgrade(db.url)
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none (already current)"
            print(f"migrations applied: {names}")
    return 0


def _init(_args: argparse.Namespace) -> int:
    with running_database() as database:
        bootstrap.prepare(database, project_environment(database), force=True)
    print("ready: databases, migrations, Airflow metadata and dbt manifest are current")
    return 0


def _env(_args: argparse.Namespace) -> int:
    """Print the project's environment as shell exports: eval "$(cart-recovery env)"."""
    database = Database.from_env()
    env = project_environment(database, base={})
    for key in sorted(env):
        if key.startswith(("AIRFLOW", "CART_RECOVERY", "DBT_", "DO_NOT_TRACK")):
            print(f"export {key}={shlex.quote(env[key])}")
    return 0


def _webhooks(args: argparse.Namespace) -> int:
    from cart_recovery.webhooks.server import serve

    with running_database() as database:
        if database.embedded:  # local use: make sure the tables exist; a configured server runs `init`
            database.ensure_databases()
            migrate.upgrade(database.url)
        return serve(host=args.host, port=args.port, database_url=database.url, workers=args.workers)


def _coupons(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from cart_recovery.dispatch import coupon_pool

    with running_database() as database:
        return coupon_pool.run(args, database.url, now=datetime.now(UTC))


def _shops(args: argparse.Namespace) -> int:
    """``shops sync``: the shops file into ops.shops, with the phone numbers of new shops."""
    import psycopg2

    from cart_recovery.shops import load_shops, shops_file_path, sync_shops_table

    shops = load_shops()
    with running_database() as database, contextlib.closing(psycopg2.connect(database.url)) as conn:
        result = sync_shops_table(conn, shops)
    print(f"{len(shops)} shops from {shops_file_path()} in ops.shops")
    for change, shop_ids in result.items():
        if shop_ids:
            print(f"  {change}: {', '.join(shop_ids)}")
    if any(result.values()):
        print("The next cart_transform build is a full refresh (the shop definitions changed).")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Run benchmarks with the database up (the embedded server is started, then stopped, if needed)."""
    from cart_recovery.bench import runner as bench_runner

    with running_database():
        return bench_runner.run(args)


def _passthrough(tool: str, argv: list[str]) -> int:
    """Run ``airflow``/``dbt`` with the project's environment and return its exit code."""
    with running_database() as database:
        env = project_environment(database)
        database.ensure_databases()
        cwd = None
        if tool == "dbt":
            cwd = env["DBT_PROJECT_DIR"]
            if argv[:2] == ["docs", "serve"] and not any(
                a == "--port" or a.startswith("--port=") for a in argv
            ):
                # dbt's default, 8080, is Airflow's; README "Ports" lists the project's ports.
                argv = [*argv, "--port", os.environ.get("CART_RECOVERY_DBT_DOCS_PORT", "8082")]
        elif argv[:1] not in (["db"], ["version"], []):
            bootstrap.prepare(database, env)
        return _run_forwarding_signals([tool, *argv], env=env, cwd=cwd)


def _run_forwarding_signals(command: list[str], *, env: dict[str, str], cwd: str | None) -> int:
    """Run ``command`` to completion; SIGTERM and SIGHUP sent to this process go on to it.

    (Ctrl-C reaches both through the terminal's process group; this process then waits for the
    child to finish rather than dying first.)
    """
    import signal

    child = subprocess.Popen(command, env=env, cwd=cwd)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _shops_or_demo(
    args: argparse.Namespace, resources: contextlib.ExitStack, demo_state: Path, webhook_url: str
) -> dict[str, str]:
    """The configured shops (nothing to add to the environment), or the demo shops, started here."""
    from cart_recovery.shops import SHOPS_FILE_ENV, load_shops, shops_file_path
    from cart_recovery.stack import demo_shops

    shops_file = shops_file_path()
    if not args.demo and (shops_file.exists() or os.environ.get(SHOPS_FILE_ENV)):
        # A shops file named explicitly but missing is an error (load_shops says so), never a
        # silent switch to demo shops that would land fake carts in a real warehouse.
        shops = load_shops(shops_file)
        print(f"\nShops from {shops_file}: " + ", ".join(f"{s.id} ({s.platform})" for s in shops))
        return {}
    every_s = float(os.environ.get("CART_RECOVERY_DEMO_ACTIVITY_S") or 45)
    demo_env = resources.enter_context(demo_shops(demo_state, webhook_url, every_s=every_s))
    why = "--demo" if args.demo else f"no shops file at {shops_file}"
    print(
        f"\nDEMO SHOPS ({why}): the shop simulator serves four demo shops (Shopify, WooCommerce, "
        "Ticimax, Ideasoft) whose customers shop in real time.\n"
        "  To use real shops instead: write config/shops.yaml and their connections "
        "(README: Adding a shop), then run make up again."
    )
    return demo_env


def _up(args: argparse.Namespace) -> int:
    from cart_recovery.ports import port_is_free
    from cart_recovery.stack import (
        LocalStack,
        UnpauseOnce,
        airflow_components,
        pipeline_status,
        webhook_component,
    )

    for what, port, option in (
        ("Airflow", args.port, "--port"),
        ("the webhook service", args.webhook_port, "--webhook-port"),
    ):
        if not port_is_free(port):
            raise CartRecoveryError(
                f"port {port} for {what} is taken: stop what uses it, or pass {option} <free port>."
            )
    database = Database.from_env()
    started = database.start()
    code = 1
    try:
        env = project_environment(database)
        # Tasks report to the api-server's execution API: on the port chosen here.
        env["AIRFLOW__API__BASE_URL"] = f"http://localhost:{args.port}"
        env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://localhost:{args.port}/execution/")
        # The local stack runs the project's DAGs as soon as they are parsed (a newcomer should not
        # have to find the toggle); production deployments keep Airflow's default, paused.
        env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = os.environ.get(
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False"
        )
        print(
            f"Preparing the database ({'embedded' if database.embedded else 'configured'}: "
            f"{database.warehouse.render_as_string(hide_password=True)}) ...",
            flush=True,
        )
        bootstrap.prepare(database, env)
        webhook_url = f"http://127.0.0.1:{args.webhook_port}"
        with contextlib.ExitStack() as resources:
            env.update(_shops_or_demo(args, resources, Path(env["AIRFLOW_HOME"]) / "demo", webhook_url))
            connections = sorted(
                k[len("AIRFLOW_CONN_") :].lower() for k in env if k.startswith("AIRFLOW_CONN_")
            )
            print("Connections: " + ", ".join(connections))
            if _DOTENV_LOADED:
                print(f"From {_DOTENV_LOADED[0]}: " + ", ".join(_DOTENV_LOADED[1:]))
            user, password = admin_credentials()
            log_dir = Path(env["AIRFLOW_HOME"]) / "logs" / "stack"
            print(
                f"\nAirflow is starting: http://localhost:{args.port}  (ready in about 30 s)\n"
                f"  login: {user} / {password}"
                f"   (set {settings.ADMIN_USER_ENV} / {settings.ADMIN_PASSWORD_ENV})\n"
                f"  webhook service: {webhook_url}/webhooks/<platform>\n"
                f"  warehouse: {database.warehouse.render_as_string(hide_password=True)}  "
                '(psql "$(cart-recovery db url)")\n'
                f"  component logs: {log_dir}/<component>.log; task logs in the UI\n"
                "  Ctrl-C stops everything.\n",
                flush=True,
            )
            components = [*airflow_components(args.port), webhook_component(args.webhook_port)]
            unpause = None
            if env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"].lower() == "false":
                unpause = UnpauseOnce(
                    base_url=f"http://127.0.0.1:{args.port}",
                    credentials=(user, password),
                    dag_ids=sorted(p.stem for p in Path(env["AIRFLOW__CORE__DAGS_FOLDER"]).glob("*.py")),
                    marker=Path(env["AIRFLOW_HOME"]) / "dags_unpaused",
                )
            stack = LocalStack(
                env=env,
                components=components,
                log_dir=log_dir,
                status=lambda: pipeline_status(database.url),
                on_tick=unpause,
            )
            code = stack.run_until_interrupted()
    finally:
        if started:
            database.stop()
            print("Stopped the embedded database (this command had started it).", flush=True)
        elif database.embedded:
            print(
                "The embedded database was already running before this command, so it is left running "
                "(`cart-recovery db stop` stops it).",
                flush=True,
            )
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cart-recovery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="the warehouse database (embedded or configured)")
    db.add_argument("action", choices=["url", "start", "stop", "status", "upgrade"])
    db.set_defaults(handler=_db)

    init = commands.add_parser("init", help="create databases, run migrations, migrate Airflow, parse dbt")
    init.set_defaults(handler=_init)

    from cart_recovery.bench import runner as bench_runner

    bench = commands.add_parser("bench", help="run benchmarks; results as JSON under bench/results/")
    bench_runner.add_arguments(bench)
    bench.set_defaults(handler=_bench)

    env = commands.add_parser("env", help='print the environment as exports: eval "$(cart-recovery env)"')
    env.set_defaults(handler=_env)

    up = commands.add_parser("up", help="run Airflow locally until Ctrl-C")
    up.add_argument("--port", type=int, default=int(os.environ.get("CART_RECOVERY_AIRFLOW_PORT") or 8080))
    up.add_argument(
        "--webhook-port", type=int, default=int(os.environ.get("CART_RECOVERY_WEBHOOK_PORT") or 8081)
    )
    up.add_argument(
        "--demo",
        action="store_true",
        help="run the simulator's demo shops even if a shops file exists (the default without one)",
    )
    up.set_defaults(handler=_up)

    from cart_recovery.simulator import command as simulate_command

    simulate = commands.add_parser("simulate", help="serve fake Shopify/WooCommerce/Ticimax/Ideasoft APIs")
    simulate_command.add_arguments(simulate)
    simulate.set_defaults(handler=simulate_command.run)

    webhooks = commands.add_parser("webhooks", help="run the webhook service (FastAPI under uvicorn)")
    webhooks.add_argument("--host", default=os.environ.get("CART_RECOVERY_WEBHOOK_HOST", "127.0.0.1"))
    webhooks.add_argument(
        "--port", type=int, default=int(os.environ.get("CART_RECOVERY_WEBHOOK_PORT") or 8081)
    )
    webhooks.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    webhooks.set_defaults(handler=_webhooks)

    from cart_recovery.dispatch import coupon_pool

    coupons = commands.add_parser(
        "coupons", help="the coupon code pool of shops without a coupon API (Ideasoft, Ticimax)"
    )
    coupon_pool.add_arguments(coupons)
    coupons.set_defaults(handler=_coupons)

    from cart_recovery.assistant import command as assistant_command

    assistant = commands.add_parser(
        "assistant", help="the conversation assistant: what it would answer a customer (sends nothing)"
    )
    assistant_command.add_arguments(assistant)
    assistant.set_defaults(handler=assistant_command.run)

    shops = commands.add_parser("shops", help="the shops file in the warehouse (ops.shops)")
    shops.add_argument("action", choices=["sync"])
    shops.set_defaults(handler=_shops)

    for tool in ("airflow", "dbt"):
        sub = commands.add_parser(
            tool, help=f"run the {tool} CLI with the project's environment", add_help=False
        )
        sub.add_argument("args", nargs=argparse.REMAINDER)
        sub.set_defaults(handler=lambda a, tool=tool: _passthrough(tool, a.args))
    return parser


_DOTENV_LOADED: list[str] = []  # [path, names...] of what .env set, for `up` to report


def load_dotenv_file(paths: settings.Paths | None = None) -> list[str]:
    """The project's ``.env`` into the environment; variables already set win. Returns the names."""
    from dotenv import dotenv_values

    path = (paths or settings.Paths.from_env()).home / ".env"
    if not path.exists():
        return []
    loaded = []
    # No ${...} expansion: a secret may contain a dollar sign.
    for name, value in dotenv_values(path, interpolate=False).items():
        if value is not None and name not in os.environ:
            os.environ[name] = value
            loaded.append(name)
    if loaded:
        _DOTENV_LOADED[:] = [str(path), *sorted(loaded)]
    return loaded


_PASSTHROUGH_TOOLS = ("airflow", "dbt")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; everything after ``dbt`` or ``airflow`` goes to that tool untouched.

    argparse's REMAINDER refuses a first word that looks like an option (``dbt --quiet ls``,
    ``airflow --help``), so the tool's words are split off before parsing.
    """
    for index, word in enumerate(argv):
        if word in _PASSTHROUGH_TOOLS:
            args = build_parser().parse_args(argv[: index + 1])
            args.args = argv[index + 1 :]
            return args
        if not word.startswith("-"):
            break
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    load_dotenv_file()
    # Every command uses the project's Airflow home, never Airflow's default ~/airflow.
    # A global AIRFLOW_HOME from the shell does not count: CART_RECOVERY_AIRFLOW_HOME moves it.
    os.environ["AIRFLOW_HOME"] = os.environ.get(settings.AIRFLOW_HOME_ENV) or str(
        settings.Paths.from_env().airflow_home()
    )
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.handler(args)
    except CartRecoveryError as exc:
        print(f"cart-recovery: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
