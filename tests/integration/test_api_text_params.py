"""Text that PostgreSQL cannot hold (a NUL character) in a path or query is a 422 naming the
parameter, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.http.app import create_app
from services.settings import Settings
from tests.support import api_key, auth

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("url", [
    "/customers/%00", "/customers/a%00b/lifecycle", "/customers/%00/timeline",
    "/lifecycle/stages?as_of=2026-01-01T00:00:00Z%00", "/satisfaction/alarms?since=%00",
    "/customers/x/timeline?cursor=%00", "/lifecycle/flow?from=%00",
])
def test_a_nul_character_is_a_422_naming_the_parameter(settings: Settings, url: str) -> None:
    with TestClient(create_app(settings), headers=auth(api_key(settings, 'admin'))) as client:
        response = client.get(url)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and ("NUL" in detail or "cursor" in detail), detail
