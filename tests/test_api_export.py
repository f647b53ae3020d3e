"""`GET /api/campaigns/{id}/leads/export`: every lead with its status, as a CSV a spreadsheet opens safely."""

from __future__ import annotations

import csv
import io
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import update

from outreach_api.leads import export
from outreach_pipeline.db.models import Lead, LeadStatus

LEADS = [
    {"email": "ada@one.example", "first_name": "Ada", "company": "=HYPERLINK(\"http://evil.example\")"},
    {"email": "bo@two.example", "first_name": "+Bo", "last_name": "-Smith", "title": "@Head, of \"Sales\""},
    {"email": "cy@three.example", "first_name": "Cy"},
]


def _rows(answer: Any) -> list[dict[str, str]]:
    assert answer.status_code == 200, answer.text
    return list(csv.DictReader(io.StringIO(answer.text)))


def test_the_export_streams_every_lead_with_its_status_spreadsheet_safe(
    client: TestClient[Any], auth_headers: dict[str, str], monkeypatch: Any
) -> None:
    cid = client.post("/api/campaigns", json={"name": "Export"}, headers=auth_headers).json()["id"]
    assert client.post(f"/api/campaigns/{cid}/leads", headers=auth_headers, json={"leads": LEADS}).json()["stored"] == 3
    with client.app.state.services.sessions() as session:
        session.execute(update(Lead).where(Lead.email == "bo@two.example").values(status=LeadStatus.REPLIED))
        session.commit()
    monkeypatch.setattr(export, "PAGE", 2)  # several pages, so the keyset paging is exercised

    answer = client.get(f"/api/campaigns/{cid}/leads/export", headers=auth_headers)

    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == f'attachment; filename="campaign-{cid}-leads.csv"'
    assert answer.text.splitlines()[0] == "email,first_name,last_name,company,title,status,created_at,replied_at"
    rows = _rows(answer)
    assert [(r["email"], r["status"]) for r in rows] == [
        ("ada@one.example", "PENDING"), ("bo@two.example", "REPLIED"), ("cy@three.example", "PENDING")]
    # Cells a spreadsheet would evaluate start with a quote; quoting keeps commas and quotes intact.
    assert rows[0]["company"] == "'=HYPERLINK(\"http://evil.example\")"
    assert (rows[1]["first_name"], rows[1]["last_name"], rows[1]["title"]) == ("'+Bo", "'-Smith", "'@Head, of \"Sales\"")
    assert rows[2]["last_name"] == rows[2]["replied_at"] == ""
    assert rows[0]["created_at"].startswith("20")

    # Filtered by status; an unknown status names the parameter.
    replied = _rows(client.get(f"/api/campaigns/{cid}/leads/export?status=REPLIED", headers=auth_headers))
    assert [r["email"] for r in replied] == ["bo@two.example"]
    bad = client.get(f"/api/campaigns/{cid}/leads/export?status=ANGRY", headers=auth_headers)
    assert bad.status_code == 400 and [e["key"] for e in bad.json()["extra"]] == ["status"]

    # An empty campaign is a header alone; no bearer token is a 401.
    empty = client.post("/api/campaigns", json={"name": "Empty"}, headers=auth_headers).json()["id"]
    assert _rows(client.get(f"/api/campaigns/{empty}/leads/export", headers=auth_headers)) == []
    assert client.get(f"/api/campaigns/{cid}/leads/export").status_code == 401
