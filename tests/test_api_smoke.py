from typing import Any

from litestar.testing import TestClient


def test_health_checks_the_database(client: TestClient[Any]) -> None:
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json()["database"] == "ok"


def test_signed_in_user_sees_self(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    assert client.get("/api/auth/me", headers=auth_headers).json()["email"] == "operator@company.example"
    assert client.get("/api/auth/me").status_code == 401
