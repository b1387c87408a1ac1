"""Server URLs as `fleetwatch up` and the publisher print them: a password given as a query
parameter (which asyncpg and libpq read as well as `user:password@`) is hidden too."""

from __future__ import annotations

import pytest

from shared.urls import redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://app@db:5432/fw?password=S3cret&sslmode=require",
            "postgresql://app@db:5432/fw?password=***&sslmode=require",
        ),
        (
            "postgresql:///fw?host=/run/pg&password=S3cret",
            "postgresql:///fw?host=/run/pg&password=***",
        ),
        (
            "postgresql://app:pw@db/fw?sslpassword=KeyPass",
            "postgresql://app:***@db/fw?sslpassword=***",
        ),
        ("postgresql://app@db/fw?sslmode=require", "postgresql://app@db/fw?sslmode=require"),
    ],
)
def test_a_password_in_the_query_is_hidden(url: str, shown: str) -> None:
    assert redacted(url) == shown
