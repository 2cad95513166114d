"""Airflow connections resolved without a running Airflow.

The project keeps credentials in Airflow connections. Outside a task (the webhook service, the
CLI, tests) they come from ``AIRFLOW_CONN_<CONN_ID>`` environment variables, exactly as Airflow's
own environment-variables secrets backend reads them, so one definition serves both. The value is
Airflow's JSON form (``{"conn_type": "http", "extra": {"webhook_secret": "..."}}``) or its URI form;
both are parsed by Airflow's own ``Connection`` class, which needs no metadata database.
"""

from __future__ import annotations

import os
from typing import Any

from cart_recovery.errors import ConfigurationError

WHATSAPP_CONN_ID = "whatsapp_default"


def env_var_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def get_connection(conn_id: str):
    """The connection ``conn_id`` as an ``airflow.sdk.Connection``; ConfigurationError when unset."""
    from airflow.sdk import Connection  # heavy import, only when a connection is needed

    name = env_var_name(conn_id)
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(
            f"Airflow connection {conn_id!r} is not defined: set {name} to its JSON form, e.g. "
            f'{name}=\'{{"conn_type": "http", "extra": {{"webhook_secret": "..."}}}}\''
        )
    try:
        if value.startswith("{"):
            return Connection.from_json(value, conn_id=conn_id)
        return Connection.from_uri(value, conn_id=conn_id)
    except Exception as exc:
        raise ConfigurationError(
            f"{name} is not a valid Airflow connection (JSON or URI form): {exc}"
        ) from exc


def connection_extra(conn_id: str) -> dict[str, Any]:
    extra = get_connection(conn_id).extra_dejson
    return extra if isinstance(extra, dict) else {}


def required_extra(conn_id: str, key: str) -> str:
    """A non-empty string from the connection's extra, or a ConfigurationError saying what to add."""
    value = connection_extra(conn_id).get(key)
    if isinstance(value, str):
        value = value.strip()  # a secret pasted with a newline must still verify signatures
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"Airflow connection {conn_id!r} ({env_var_name(conn_id)}) has no {key!r} in its extra; "
            f'add it, e.g. "extra": {{"{key}": "..."}}'
        )
    return value
