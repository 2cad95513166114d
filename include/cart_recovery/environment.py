"""The environment that Airflow, dbt and the project's commands run with.

One function builds it, so ``cart-recovery airflow``, ``make up``, the tests and dbt all see the
same AIRFLOW_HOME, database, DAGs folder and connections. Variables the user has already set win.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from sqlalchemy.engine import URL

from cart_recovery import settings
from cart_recovery.database import Database


def _jwt_secret(airflow_home: Path) -> str:
    """A secret shared by every Airflow component of this installation, kept across restarts."""
    path = airflow_home / "jwt_secret"
    if not path.exists():
        airflow_home.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def admin_credentials() -> tuple[str, str]:
    # An empty value (as in a .env copied from .env.example) counts as unset.
    return (
        os.environ.get(settings.ADMIN_USER_ENV) or "admin",
        os.environ.get(settings.ADMIN_PASSWORD_ENV) or "admin",
    )


def _passwords_file(airflow_home: Path) -> Path:
    """Airflow's simple auth manager reads the login from this file."""
    user, password = admin_credentials()
    path = airflow_home / "simple_auth_manager_passwords.json"
    airflow_home.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({user: password}))
    path.chmod(0o600)
    return path


def _libpq_parts(url: URL) -> dict[str, str]:
    return {
        "CART_RECOVERY_DB_HOST": url.host or "127.0.0.1",
        "CART_RECOVERY_DB_PORT": str(url.port or 5432),
        "CART_RECOVERY_DB_USER": url.username or "postgres",
        "CART_RECOVERY_DB_PASSWORD": url.password or "",
        "CART_RECOVERY_DB_NAME": url.database or settings.DEFAULT_WAREHOUSE_DB,
    }


def warehouse_environment(database: Database) -> dict[str, str]:
    """Every variable that names the warehouse: the Airflow connection, the URL and dbt's libpq parts.

    Pointing a process (or a test module) at another warehouse database means setting all of these.
    """
    return {
        f"AIRFLOW_CONN_{settings.WAREHOUSE_CONN_ID.upper()}": json.dumps(
            {
                "conn_type": "postgres",
                "host": database.warehouse.host,
                "port": database.warehouse.port or 5432,
                "login": database.warehouse.username,
                "password": database.warehouse.password or "",
                "schema": database.warehouse.database,
            }
        ),
        settings.DATABASE_URL_ENV: database.url,
        **_libpq_parts(database.warehouse),
    }


def project_environment(
    database: Database,
    *,
    paths: settings.Paths | None = None,
    airflow_profile: str = "",
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The full environment for a child process (or for ``os.environ`` in tests)."""
    paths = paths or settings.Paths.from_env()
    base = dict(os.environ if base is None else base)
    # CART_RECOVERY_AIRFLOW_HOME moves Airflow's home (a second local stack, the end-to-end test);
    # a global AIRFLOW_HOME from the user's shell never does, so ~/airflow is never touched.
    configured_home = base.get(settings.AIRFLOW_HOME_ENV)
    airflow_home = Path(configured_home) if configured_home else paths.airflow_home(airflow_profile)
    airflow_home.mkdir(parents=True, exist_ok=True)
    user, _ = admin_credentials()
    venv_bin = str(Path(sys.executable).parent)

    defaults = {
        "AIRFLOW_HOME": str(airflow_home),
        settings.AIRFLOW_HOME_ENV: str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(paths.dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(paths.plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The LocalExecutor, with the tasks' imports loaded before it forks (cart_recovery.executor).
        "AIRFLOW__CORE__EXECUTOR": "cart_recovery.executor.PreloadingLocalExecutor",
        "GX_ANALYTICS_ENABLED": "False",
        # Sized for the machine: the LocalExecutor starts this many worker processes.
        "AIRFLOW__CORE__PARALLELISM": str(max(4, 2 * len(os.sched_getaffinity(0)))),
        # One BLAS thread: pandas/numpy are imported before the executor forks (executor.py).
        "OPENBLAS_NUM_THREADS": "1",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_passwords_file(airflow_home)),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database.airflow_sqlalchemy_url,
        "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(airflow_home),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        # The project's package and the Cosmos cache live beside the DAGs, not in ~/.
        "AIRFLOW__COSMOS__CACHE_DIR": str(airflow_home / "cosmos_cache"),
        # Task groups keyed by their folder's full path: intermediate/recovery and marts/recovery
        # are two groups, not one (cart_recovery.transform groups the dbt graph by folder).
        "AIRFLOW__COSMOS__ENABLE_HIERARCHICAL_NAMING_FOR_GROUP_NODES_BY_FOLDER": "True",
        "DBT_PROFILES_DIR": str(paths.dbt_project),
        "DBT_PROJECT_DIR": str(paths.dbt_project),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
        **warehouse_environment(database),
    }
    env = {**defaults, **{k: v for k, v in base.items() if k in defaults and k.startswith("AIRFLOW__")}}
    # The warehouse settings always follow the database chosen for this call.
    merged = {**base, **env}
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW_HOME",
        settings.AIRFLOW_HOME_ENV,
    ):
        merged[key] = defaults[key]
    merged.update(warehouse_environment(database))
    path = merged.get("PATH", "")
    if not path.startswith(venv_bin + os.pathsep):
        # `airflow standalone`-style launchers and Cosmos run `airflow`/`dbt` from PATH.
        merged["PATH"] = venv_bin + os.pathsep + path
    return merged
