"""How the dbt project is rendered into Airflow by Cosmos.

Parse-time safe: nothing here connects to a database or runs dbt. The DAG renders from the
manifest that ``dbt parse`` writes (``cart-recovery init`` and ``make up`` do it), which parses
in well under a second, where ``LoadMode.DBT_LS`` would run dbt on every parse.
"""

from __future__ import annotations

from typing import Any

from cart_recovery import settings
from cart_recovery.errors import ConfigurationError

ASSET_RAW = "cart-recovery://warehouse/raw"
ASSET_RECOVERY_PLAN = "cart-recovery://warehouse/marts/recovery_plan"


def cosmos_configs() -> dict[str, Any]:
    """Keyword arguments for ``DbtTaskGroup``/``DbtDag``: project, profile, render, execution."""
    from cosmos import ExecutionConfig, InvocationMode, LoadMode, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import ExecutionMode, TestBehavior, TestIndirectSelection

    paths = settings.Paths.from_env()
    if not paths.dbt_manifest.exists():
        raise ConfigurationError(
            f"{paths.dbt_manifest} is missing: run `cart-recovery init` (or `make up`), which runs dbt parse."
        )
    return {
        "project_config": ProjectConfig(
            dbt_project_path=paths.dbt_project,
            manifest_path=paths.dbt_manifest,
            project_name="cart_recovery",
            install_dbt_deps=False,
        ),
        "profile_config": ProfileConfig(
            profile_name="cart_recovery",
            target_name="warehouse",
            profiles_yml_filepath=paths.dbt_project / "profiles.yml",
        ),
        "render_config": RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            # One task per model: `dbt build --select <model>` runs the model, then its tests (a
            # task per model and another per model's tests cost about a second each in dbt
            # start-up, half of a run that finds nothing new).
            test_behavior=TestBehavior.BUILD,
            # A task group per folder (seeds, staging per platform, intermediate, marts): the graph
            # in the UI reads like the dbt project's layers.
            group_nodes_by_folder=True,
        ),
        "execution_config": ExecutionConfig(
            execution_mode=ExecutionMode.LOCAL,
            # dbt runs inside the worker process (no subprocess per model: about 1 s saved each).
            invocation_mode=InvocationMode.DBT_RUNNER,
            # A test over two models (relationships) runs in the task of the later one, once both
            # are built: dbt's "buildable" indirect selection.
            test_indirect_selection=TestIndirectSelection.BUILDABLE,
        ),
    }


ASSET_WEBHOOK_EVENTS = "cart-recovery://warehouse/raw/webhook_events"

# The newest shop webhook (channel webhooks such as WhatsApp have shop_id '') and the time the
# last cart_transform build planned for. A backward scan of the primary key, then one row.
_NEWEST_WEBHOOK_SQL = """
select e.event_id, e.received_at, (select max(as_of) from ops.transform_runs) as last_build_as_of
from raw.webhook_events e
where e.shop_id <> ''
order by e.event_id desc
limit 1
"""


async def unbuilt_webhook_event(conn_url: str, after_event_id: int | None) -> tuple[int, Any] | None:
    """The newest shop webhook newer than ``after_event_id`` and not yet seen by a build, if any.

    Returns ``(event_id, received_at)`` when a shop webhook landed after the last build's
    ``as_of`` (or there was no build yet); ``None`` when there is nothing new for the transform.
    Used by the webhook watcher trigger in ``plugins/`` to start ``cart_transform``.
    """
    import psycopg

    async with await psycopg.AsyncConnection.connect(conn_url, autocommit=True, connect_timeout=10) as conn:
        cursor = await conn.execute(_NEWEST_WEBHOOK_SQL)
        row = await cursor.fetchone()
    if row is None:
        return None
    event_id, received_at, last_build_as_of = row
    if after_event_id is not None and event_id <= after_event_id:
        return None
    if last_build_as_of is not None and received_at <= last_build_as_of:
        return None
    return event_id, received_at
