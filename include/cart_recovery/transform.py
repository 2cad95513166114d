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
