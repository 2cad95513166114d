"""Where things live on disk and the environment variables that configure the project.

Every setting has a default that works on a fresh clone; environment variables override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATABASE_URL_ENV = "CART_RECOVERY_DATABASE_URL"
HOME_ENV = "CART_RECOVERY_HOME"
EMBEDDED_PORT_ENV = "CART_RECOVERY_EMBEDDED_PORT"
ADMIN_USER_ENV = "CART_RECOVERY_ADMIN_USER"
ADMIN_PASSWORD_ENV = "CART_RECOVERY_ADMIN_PASSWORD"
AIRFLOW_HOME_ENV = "CART_RECOVERY_AIRFLOW_HOME"

DEFAULT_EMBEDDED_PORT = 54329
DEFAULT_WAREHOUSE_DB = "cart_recovery"
WAREHOUSE_CONN_ID = "cart_recovery_warehouse"


def _default_home() -> Path:
    # include/cart_recovery/settings.py -> the project root is two folders above the package.
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Paths:
    """The project's folders. ``.data`` and ``.airflow`` are local state, ignored by git."""

    home: Path

    @classmethod
    def from_env(cls) -> Paths:
        return cls(home=Path(os.environ.get(HOME_ENV) or _default_home()).resolve())

    @property
    def dags(self) -> Path:
        return self.home / "dags"

    @property
    def plugins(self) -> Path:
        return self.home / "plugins"

    @property
    def dbt_project(self) -> Path:
        return self.home / "dbt_project"

    @property
    def dbt_manifest(self) -> Path:
        return self.dbt_project / "target" / "manifest.json"

    @property
    def data(self) -> Path:
        return self.home / ".data"

    @property
    def embedded_pgdata(self) -> Path:
        return self.data / "postgres"

    def airflow_home(self, profile: str = "") -> Path:
        """``.airflow`` for normal use, ``.airflow/<profile>`` for an isolated profile such as tests."""
        return self.home / ".airflow" / profile if profile else self.home / ".airflow"
