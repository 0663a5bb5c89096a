"""The PostgreSQL store: what only it promises (its conformance cases run in test_storage.py)."""

from __future__ import annotations

import asyncpg


async def test_each_test_gets_its_own_empty_database(postgres_url: str, postgres_server: object) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("CREATE TABLE mine (x int)")
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert [row["tablename"] for row in tables] == ["mine"]
    finally:
        await conn.close()
    other = await asyncpg.connect(postgres_server.database())  # type: ignore[attr-defined]
    try:
        assert await other.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []
    finally:
        await other.close()
