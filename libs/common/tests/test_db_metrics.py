from __future__ import annotations

import pytest

from mercato_common.db_metrics import postgres_operation


@pytest.mark.parametrize(
    ("query", "operation"),
    [
        ("BEGIN;", "BEGIN"),
        ("COMMIT;", "COMMIT"),
        ("select 1", "SELECT"),
        ("\n  (SELECT 1) UNION (SELECT 2)", "SELECT"),
        ("WITH x AS (DELETE FROM t RETURNING 1) SELECT 1", "WITH"),
        ("INSERT INTO t VALUES ($1)", "INSERT"),
        ("VACUUM t", "OTHER"),  # not a named kind: the label set stays bounded
        ("", "OTHER"),
        ("-- a comment first", "OTHER"),
    ],
)
def test_a_statement_is_named_by_its_first_keyword(query: str, operation: str) -> None:
    assert postgres_operation(query) == operation
