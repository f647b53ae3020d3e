"""Real lead files through both doors: the API upload and the bucket (sensor + `lead_file_import` asset).

Each file is an export as a tool or Excel writes it (tests/data/ingest/README.md says which). Every test
runs once per door and once per database, and asserts exact counts per reason, the stored leads, and the
rejects report line by line (original file lines, even after quoted fields that span several lines).
"""

from __future__ import annotations

import codecs
import csv
import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context, instance_for_test, materialize
from litestar.testing import TestClient
from sqlalchemy import func, select

from outreach_pipeline.assets.leads import lead_file_import
from outreach_pipeline.core import lead_file
from outreach_pipeline.core.lead_schema import SchemaCheckError, failure_reasons
from outreach_pipeline.core.leads import NO_EMAIL_COLUMN
from outreach_pipeline.core.rejects import spreadsheet_safe
from outreach_pipeline.db.models import ImportStatus, Lead, LeadImport, Suppression
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.sensors import leads_bucket_sensor
from outreach_pipeline.settings import Settings

DATA = Path(__file__).parent / "data" / "ingest"


@dataclass
class Outcome:
    """What an import told its caller, the same shape whichever door it came through."""

    counts: dict[str, Any] | None  # rows_read, stored, rejected, rejected_by_reason
    error: str | None  # the message of an import that failed
    rejects: list[list[str]] | None  # the rejects report's rows, header included


@dataclass
class Door:
    name: str
    client: TestClient[Any]
    headers: dict[str, str]
    settings: Settings
    send: Callable[[int, str, bytes], Outcome]

    def campaign(self) -> int:
        answer = self.client.post("/api/campaigns", json={"name": f"Import {uuid.uuid4().hex[:6]}"},
                                  headers=self.headers)
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def leads(self, campaign_id: int) -> dict[str, dict[str, Any]]:
        answer = self.client.get(f"/api/campaigns/{campaign_id}/leads?limit=1000", headers=self.headers)
        assert answer.status_code == 200, answer.text
        return {lead["email"]: lead for lead in answer.json()["items"]}

    def stored_count(self) -> int:
        with self.client.app.state.services.sessions() as session:
            return session.scalar(select(func.count()).select_from(Lead)) or 0

    def imports(self) -> list[LeadImport]:
        with self.client.app.state.services.sessions() as session:
            return list(session.scalars(select(LeadImport).order_by(LeadImport.id)))

    def suppress(self, address: str) -> None:
        owner = self.client.get("/api/auth/me", headers=self.headers).json()["id"]
        with self.client.app.state.services.sessions() as session:
            session.add(Suppression(owner_id=owner, email=address, reason="manual"))
            session.commit()


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _api_door(client: TestClient[Any], headers: dict[str, str], settings: Settings) -> Callable[..., Outcome]:
    def send(campaign_id: int, name: str, data: bytes) -> Outcome:
        answer = client.post(f"/api/campaigns/{campaign_id}/leads/import", headers=headers,
                             files={"data": (name, data, "text/csv")})
        if answer.status_code == 422:
            return Outcome(None, answer.json()["detail"], None)
        assert answer.status_code == 201, answer.text
        body = answer.json()
        reports = sorted((settings.data_dir / "imports" / str(campaign_id)).glob(f"*{name.rsplit('.', 1)[0]}*"))
        assert len(reports) <= 1
        rejects = _rows(reports[0].read_text(encoding="utf-8")) if reports else None
        # The response's first rejects are the report's first rows (the report neutralises formulas).
        if rejects:
            assert [[str(r["line"]), spreadsheet_safe(r["email"]), r["reason"]]
                    for r in body["first_rejects"]] == rejects[1:101]
        counts = {k: body[k] for k in ("rows_read", "stored", "rejected", "rejected_by_reason")}
        return Outcome(counts, None, rejects)

    return send


def _bucket_door(settings: Settings, instance: DagsterInstance) -> Callable[..., Outcome]:
    resources = resources_from_settings(settings)

    def send(campaign_id: int, name: str, data: bytes) -> Outcome:
        folder = Path(settings.leads_bucket) / str(campaign_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        with build_sensor_context(instance=instance, resources=resources) as context:
            sensed = leads_bucket_sensor(context)
        assert isinstance(sensed, SensorResult)
        (request,) = [r for r in sensed.run_requests if r.partition_key == f"{campaign_id}/{name}"]
        for add in sensed.dynamic_partitions_requests:
            instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        result = materialize([lead_file_import], partition_key=request.partition_key, instance=instance,
                             resources=resources, raise_on_error=False)
        assert not (folder / name).exists()  # moved aside whatever happened
        assert (folder / "processed" / name).read_bytes() == data
        if not result.success:
            failure = result.failure_data_for_node("lead_file_import")
            assert failure is not None and failure.user_failure_data is not None
            prefix = f"{request.partition_key}: "
            description = failure.user_failure_data.description or ""
            assert description.startswith(prefix)
            return Outcome(None, description[len(prefix):], None)
        (materialization,) = result.asset_materializations_for_node("lead_file_import")
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        report = folder / "rejected" / f"{name.rsplit('.', 1)[0]}.rejects.csv"
        rejects = _rows(report.read_text(encoding="utf-8")) if report.exists() else None
        assert metadata["rejects_report"] == (str(report) if rejects else None)
        return Outcome({k: metadata[k] for k in ("rows_read", "stored", "rejected", "rejected_by_reason")},
                       None, rejects)

    return send


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as dagster_instance:
        yield dagster_instance


@pytest.fixture(params=["api", "bucket"])
def door(request: pytest.FixtureRequest, client: TestClient[Any], auth_headers: dict[str, str],
         settings: Settings, instance: DagsterInstance) -> Door:
    if request.param == "api":
        send = _api_door(client, auth_headers, settings)
    else:
        send = _bucket_door(settings, instance)
    return Door(request.param, client, auth_headers, settings, send)


def _name(stem: str, suffix: str = "csv") -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}.{suffix}"


# --- exports as tools write them -----------------------------------------------------------------------


def test_a_sales_navigator_export_maps_its_headers_and_keeps_the_rest_as_custom_fields(door: Door) -> None:
    cid = door.campaign()

    outcome = door.send(cid, _name("sales-navigator"), (DATA / "sales_navigator.csv").read_bytes())

    assert outcome.counts == {"rows_read": 5, "stored": 3, "rejected": 2,
                              "rejected_by_reason": {"missing email": 1, "invalid email": 1}}
    assert outcome.rejects == [["line", "email", "reason"], ["4", "", "missing email"],
                               ["6", "sofia.novak@novak logistika.cz", "invalid email"]]
    leads = door.leads(cid)
    assert set(leads) == {"ingrid.solberg@fjordcargo.no", "m.bianchi@bianchitrasporti.it",
                          "kwame@accrahaulage.com.gh"}
    ingrid = leads["ingrid.solberg@fjordcargo.no"]
    assert (ingrid["first_name"], ingrid["last_name"], ingrid["company"], ingrid["title"]) == (
        "Ingrid", "Solberg", "Fjord Cargo AS", "Head of Logistics")
    assert ingrid["custom_fields"] == {
        "linkedin_profile_url": "https://www.linkedin.com/sales/lead/ACwAAB1", "geography": "Oslo, Norway",
        "company_headcount": "51-200", "connection_degree": "2nd"}


def test_a_linkedin_connections_export_skips_the_notes_above_its_header(door: Door) -> None:
    cid = door.campaign()

    outcome = door.send(cid, _name("connections"), (DATA / "linkedin_connections.csv").read_bytes())

    assert outcome.counts == {"rows_read": 3, "stored": 2, "rejected": 1,
                              "rejected_by_reason": {"missing email": 1}}
    assert outcome.rejects == [["line", "email", "reason"], ["6", "", "missing email"]]  # the file's own line
    carmen = door.leads(cid)["carmen.ruiz@logistica.example"]
    assert (carmen["first_name"], carmen["company"], carmen["title"]) == (
        "Carmen", "Logística Ruiz", "Directora de Operaciones")
    assert carmen["custom_fields"] == {"url": "https://www.linkedin.com/in/carmen-ruiz",
                                       "connected_on": "28 Jan 2024"}


def test_blank_lines_above_the_header_count_in_the_line_numbers(door: Door) -> None:
    cid = door.campaign()

    outcome = door.send(cid, _name("blank-top"), b"\r\n\r\nemail,first_name\r\nann@a.example,Ann\r\nnot-an-address,Bo\r\n")

    assert outcome.rejects == [["line", "email", "reason"], ["5", "not-an-address", "invalid email"]]


def test_an_excel_unicode_text_file_is_utf16_and_tab_separated(door: Door) -> None:
    cid = door.campaign()

    outcome = door.send(cid, _name("unicode", "txt"), (DATA / "excel_unicode_text.txt").read_bytes())

    # Line 4 is an address with a non-ASCII local part (SMTPUTF8), which we do not send to; line 5 is blank.
    assert outcome.counts == {"rows_read": 4, "stored": 3, "rejected": 1,
                              "rejected_by_reason": {"invalid email": 1}}
    assert outcome.rejects == [["line", "email", "reason"], ["4", "zoë.dupont@exemple.fr", "invalid email"]]
    leads = door.leads(cid)
    assert set(leads) == {"yuki.sato@kaisoku.jp", "oskar.lindqvist@nordfrakt.se", "amara.okeke@lagosline.ng"}
    yuki = leads["yuki.sato@kaisoku.jp"]
    assert (yuki["first_name"], yuki["last_name"], yuki["company"], yuki["title"], yuki["timezone"]) == (
        "佐藤", "優希", "快速物流株式会社", "部長", "Asia/Tokyo")
    assert yuki["custom_fields"] == {"region": "Kantō"}


def test_a_european_excel_csv_is_windows_1252_with_semicolons_blank_lines_and_trailing_columns(door: Door) -> None:
    cid = door.campaign()

    outcome = door.send(cid, _name("excel-eu"), (DATA / "excel_european.csv").read_bytes())

    assert outcome.counts == {"rows_read": 5, "stored": 3, "rejected": 2,
                              "rejected_by_reason": {"duplicate in file": 1, "invalid email": 1}}
    assert outcome.rejects == [["line", "email", "reason"],
                               ["7", "JURGEN.MULLER@muller-bau.de", "duplicate in file"],
                               ["8", "bad-address.example.com", "invalid email"]]
    leads = door.leads(cid)
    assert set(leads) == {"francois.lefevre@chateau-vins.fr", "jurgen.muller@muller-bau.de",
                          "ines.garcia@logistica-iberica.es"}
    francois = leads["francois.lefevre@chateau-vins.fr"]
    assert (francois["first_name"], francois["last_name"], francois["company"]) == (
        "François", "Lefèvre", "Château & Vins")
    assert francois["custom_fields"] == {"stadt": "Bordeaux"}  # the empty trailing columns are not fields
    assert leads["ines.garcia@logistica-iberica.es"]["title"] == "Directora – Compras"  # cp1252's en dash


def test_quoted_fields_spanning_lines_keep_the_original_line_numbers(door: Door) -> None:
    cid = door.campaign()

    outcome = door.send(cid, _name("hubspot-notes"), (DATA / "hubspot_notes_bom.csv").read_bytes())

    assert outcome.counts == {"rows_read": 5, "stored": 2, "rejected": 3,
                              "rejected_by_reason": {"invalid email": 2, "control characters: title": 1}}
    assert outcome.rejects == [
        ["line", "email", "reason"],
        ["4", "ava.chen@@pacificrim.com", "invalid email"],
        ["6", "noah.schmidt@elbe-logistik.de", "control characters: title"],  # a line break in a title
        # A formula in a cell is neutralised for spreadsheets.
        ["10", "'=HYPERLINK(\"http://evil.example\")@x.com", "invalid email"],
    ]
    leads = door.leads(cid)
    assert set(leads) == {"liam.walsh@harbourfreight.ie", "mia.rossi@portovenezia.it"}
    liam = leads["liam.walsh@harbourfreight.ie"]
    assert liam["first_name"] == "Liam"  # the BOM is not part of the first header
    assert liam["custom_fields"] == {"record_id": "701", "notes": "Met at TOC Europe.\nPrefers email, not calls."}
    assert leads["mia.rossi@portovenezia.it"]["custom_fields"]["notes"] == 'Said: "call in Q3"'


def test_classic_mac_line_endings_are_lines_too(door: Door) -> None:
    # "CSV (Macintosh)" from Excel ends lines with a bare CR; a quoted note spans two of them.
    data = (b'Email,First Name,Notes\r'
            b'ann@one.example,Ann,"met at\rthe fair"\r'
            b'not-an-address,Bo,\r'
            b'cy@three.example,Cy,\r')
    cid = door.campaign()

    outcome = door.send(cid, _name("mac"), data)

    assert outcome.counts["stored"] == 2
    assert outcome.rejects == [["line", "email", "reason"], ["4", "not-an-address", "invalid email"]]
    assert door.leads(cid)["ann@one.example"]["custom_fields"] == {"notes": "met at\rthe fair"}


def test_every_row_is_stored_or_rejected_with_its_reason(door: Door) -> None:
    cid = door.campaign()
    existing = door.client.post(f"/api/campaigns/{cid}/leads", headers=door.headers,
                                json={"leads": [{"email": "existing@theta.example"}]})
    assert existing.json()["stored"] == 1
    door.suppress("blocked@eta.example")

    outcome = door.send(cid, _name("every-reason"), (DATA / "every_reason.csv").read_bytes())

    assert outcome.counts == {"rows_read": 12, "stored": 3, "rejected": 9, "rejected_by_reason": {
        "too long: first_name": 1, "control characters: company": 1, "control characters": 1,
        "too many columns": 1, "missing email": 1, "suppressed": 1, "already in campaign": 1,
        "duplicate in file": 1, "invalid email": 1}}
    assert outcome.rejects == [
        ["line", "email", "reason"],
        ["3", "long.name@beta.example", "too long: first_name"],
        ["4", "bell@gamma.example", "control characters: company"],
        ["5", "ctrl@delta.example", "control characters"],
        ["6", "wide@epsilon.example", "too many columns"],
        ["7", "", "missing email"],
        ["8", "Blocked@eta.example", "suppressed"],
        ["9", "existing@theta.example", "already in campaign"],
        ["12", "OK.ONE@alpha.example", "duplicate in file"],
        ["13", "'@kappa.example", "invalid email"],
    ]
    leads = door.leads(cid)
    assert set(leads) == {"existing@theta.example", "ok.one@alpha.example", "ok.two@iota.example",
                          "-cmd@lambda.example"}
    assert leads["ok.two@iota.example"]["custom_fields"] == {"plan": "multi\nline\tplan"}


def test_spreadsheet_leftovers_and_odd_cells_each_end_somewhere(door: Door) -> None:
    """Rows of empty cells are skipped, a second spelling of a field and an unnamed last column keep their
    data as custom fields, and a cell too long or a name holding an invisible line break rejects its row only."""
    cid = door.campaign()
    note = "n" * 150_000  # over what the reader once refused outright, failing the whole file
    data = ("Email,Work Email,Company,Organization,First Name,\n"
            "ann@acme.example,ann.w@acme.example,Acme,Acme Holdings,Ann,VIP\n"
            ",,,,,\n"
            "bob@beta.example,,Beta,,Bo\u0085b,\n"
            f"cy@gamma.example,,Gamma,,Cy,{note}\n"
            "dee@delta.example,,Delta,,De\u2028e,\n"
            ",,,,,\n").encode()

    outcome = door.send(cid, _name("leftovers"), data)

    assert outcome.counts == {"rows_read": 4, "stored": 1, "rejected": 3, "rejected_by_reason": {
        "control characters: first_name": 2, "too long: a custom field over 10,000 characters": 1}}
    assert outcome.rejects == [["line", "email", "reason"],
                               ["4", "bob@beta.example", "control characters: first_name"],
                               ["5", "cy@gamma.example", "too long: a custom field over 10,000 characters"],
                               ["6", "dee@delta.example", "control characters: first_name"]]
    (ann,) = door.leads(cid).values()
    assert (ann["email"], ann["company"], ann["first_name"]) == ("ann@acme.example", "Acme", "Ann")
    assert ann["custom_fields"] == {"work_email": "ann.w@acme.example", "organization": "Acme Holdings",
                                    "column_6": "VIP"}


def test_a_header_whose_cells_hold_commas_is_split_by_the_delimiter_its_rows_use(door: Door) -> None:
    cid = door.campaign()
    text = "Company, Inc.\tEmail\tName, Full\r\nAcme\tann@acme.example\tAnn\r\nBeta, Ltd\tbo@beta.example\tBo\r\n"

    outcome = door.send(cid, _name("tabs", "txt"), codecs.BOM_UTF16_LE + text.encode("utf-16-le"))

    assert outcome.counts == {"rows_read": 2, "stored": 2, "rejected": 0, "rejected_by_reason": {}}
    assert door.leads(cid)["bo@beta.example"]["custom_fields"] == {"company_inc": "Beta, Ltd", "name_full": "Bo"}


def test_rows_read_by_pyarrow_and_by_the_csv_module_are_reported_on_their_lines(
        door: Door, monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of 200 bytes: regular blocks go to pyarrow, those with a quoted line break, a blank line or a
    # too-wide row to the csv module (core/lead_file.py); the report names each row's line either way.
    monkeypatch.setattr(lead_file, "BYTE_BLOCK_BYTES", 200)
    regular = [f"lead{n}@acme.example,Lead {n}" for n in range(40)]
    rows = ["Email,First Name", *regular[:10], "bad@@acme.example,Bad", *regular[10:20],
            'notes@acme.example,"Two\nlines"', *regular[20:30], "", "wide@acme.example,Wide,extra",
            "LEAD3@ACME.EXAMPLE,Again", *regular[30:]]

    outcome = door.send(cid := door.campaign(), _name("blocks"), "\n".join(rows).encode())

    assert outcome.counts == {"rows_read": 44, "stored": 40, "rejected": 4, "rejected_by_reason": {
        "invalid email": 1, "control characters: first_name": 1, "too many columns": 1, "duplicate in file": 1}}
    assert outcome.rejects == [["line", "email", "reason"], ["12", "bad@@acme.example", "invalid email"],
                               ["23", "notes@acme.example", "control characters: first_name"],
                               ["36", "wide@acme.example", "too many columns"],
                               ["37", "LEAD3@acme.example", "duplicate in file"]]
    assert door.leads(cid)["lead39@acme.example"]["first_name"] == "Lead 39"


def test_a_file_of_only_empty_rows_has_no_rows(door: Door) -> None:
    cid = door.campaign()

    outcome = door.send(cid, _name("empty-rows"), b"Email,First Name,Company\n,,\n , ,\n,,\n")

    assert outcome.error == "The file has a header but no rows."


def test_a_file_whose_every_row_is_refused_is_reported_not_crashed(door: Door) -> None:
    cid = door.campaign()

    outcome = door.send(cid, _name("all-bad"), b"email,first_name\nnot-an-address,Ann\n,Bo\nx@y.example,C\x07y\n")

    assert outcome.counts == {"rows_read": 3, "stored": 0, "rejected": 3, "rejected_by_reason": {
        "invalid email": 1, "missing email": 1, "control characters: first_name": 1}}
    assert door.leads(cid) == {}


# --- input that is not a lead file ----------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00" + bytes(range(256))
HUGE_LINE = b"email,first_name\n" + b"x" * 1_200_000 + b"@huge.example,Huge\n"
# Over one chunk (50,000 rows) of good rows first: those were inserted before the bad line was reached.
GOOD_THEN_HUGE = b"email,first_name\n" + b"".join(
    b"lead%d@many.example,Lead\n" % i for i in range(50_010)) + b"x" * 1_100_000 + b"\n"

NOT_LEAD_FILES = {
    "empty": (b"", "The file is empty."),
    "blank-lines": (b"\n\r\n  \n", "The file is empty."),
    "binary": (PNG, "This is not a CSV file (it contains binary data)."),
    "no-email-column": ("First Name,Company\nAda,Acme\n".encode(), NO_EMAIL_COLUMN),
    "header-only": (b"\xef\xbb\xbfEmail,First Name\r\n\r\n", "The file has a header but no rows."),
    # Every line after the quote would be that cell's text: failing says so instead of storing "Bob" alone.
    "unclosed-quote": (b'email,first_name\na@ok.example,Ann\nb@ok.example,"Bob\nc@ok.example,Cy\n',
                       "Line 3 opens a quoted field that is never closed: the rest of the file would be read "
                       "as that one cell. Close the quote (or remove it) and import the file again."),
    "huge-single-line": (HUGE_LINE, "Line 2 is longer than 1,000,000 characters: this is not a lead file."),
    "good-rows-then-a-huge-line": (
        GOOD_THEN_HUGE, "Line 50012 is longer than 1,000,000 characters: this is not a lead file."),
}


@pytest.mark.parametrize("kind", list(NOT_LEAD_FILES))
def test_a_file_that_is_not_a_lead_list_fails_the_import_and_leaves_nothing_behind(door: Door, kind: str) -> None:
    data, message = NOT_LEAD_FILES[kind]
    cid = door.campaign()

    outcome = door.send(cid, _name(kind), data)

    assert (outcome.counts, outcome.error, outcome.rejects) == (None, message, None)
    assert door.stored_count() == 0
    (failed,) = door.imports()
    assert (failed.status, failed.error, failed.accepted, failed.rejects_path) == (
        ImportStatus.FAILED, message, 0, None)
    # No rejects report, not even a scratch file.
    for folder in (door.settings.data_dir / "imports", Path(door.settings.leads_bucket) / str(cid) / "rejected"):
        assert not folder.exists() or list(folder.iterdir()) == []


def test_a_schema_check_that_breaks_fails_loudly_instead_of_passing_every_row() -> None:
    # pandera reports a check that raised as a failure of no row; counting it as "no failures" would let
    # every row through unchecked.
    schema = pa.DataFrameSchema({"email": pa.Column(str, pa.Check(lambda values: 1 / 0, error="broken"))})
    with pytest.raises(pa.errors.SchemaErrors) as errors:
        schema.validate(pd.DataFrame({"email": ["ann@one.example"]}), lazy=True)

    with pytest.raises(SchemaCheckError, match="broken"):
        failure_reasons(errors.value.failure_cases)


def test_lengths_are_counted_in_characters_not_bytes(door: Door) -> None:
    """The length rules read a column's byte sizes first and count characters only when some cell has more
    bytes than the limit allows characters: a 200-letter accented name (400 bytes) is at the limit."""
    cid = door.campaign()
    at_limit, over_limit = "é" * 200, "é" * 201
    data = f"email,first_name,title\nann@one.example,{at_limit},{'ü' * 300}\nbo@two.example,{over_limit},\n"

    outcome = door.send(cid, _name("accents"), data.encode())

    assert outcome.counts["stored"] == 1
    assert outcome.rejects == [["line", "email", "reason"], ["3", "bo@two.example", "too long: first_name"]]
    assert door.leads(cid)["ann@one.example"]["first_name"] == at_limit
