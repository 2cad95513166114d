"""Reading and writing the test warehouse in one statement, for the dispatch tests."""

from __future__ import annotations

import psycopg2
from psycopg2.extras import RealDictCursor


def rows(url: str, sql: str, params: tuple | dict = ()) -> list[dict]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor(cursor_factory=RealDictCursor) as cursor:
            cursor.execute(sql, params)
            return [dict(row) for row in cursor.fetchall()]
    finally:
        conn.close()


def execute(url: str, sql: str, params: tuple | dict = ()) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
    finally:
        conn.close()
