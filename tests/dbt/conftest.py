"""Fixtures of the dbt tests: each module builds the story in a warehouse of its own."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
from dbt_raw_rows import run_dbt
from recovery_story import AS_OF, story


@pytest.fixture(scope="module")
def database(module_database):
    """A warehouse of this module's own: the build replaces the raw rows and the dbt schemas."""
    return module_database


@pytest.fixture(scope="module")
def built(database) -> Iterator[psycopg2.extensions.connection]:
    """The story's raw rows, built by a full `dbt build` as of AS_OF; a connection to them."""
    conn = psycopg2.connect(database.url)
    story().write(conn)
    run_dbt("build", "--full-refresh", as_of=AS_OF)
    yield conn
    conn.close()
