"""The fake Postmark and OpenAI servers honour the providers' contracts, as seen through the real clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import openai
import pydantic
import pytest
import requests
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from tests.fakes.openai import FakeOpenAI
from tests.fakes.postmark import FakePostmark

SENDER = "Sales <sales@outreach.example>"


def email(to: str, **extra: Any) -> dict[str, Any]:
    return {"From": SENDER, "To": to, "Subject": "Hello", "TextBody": "Hi there", **extra}


@pytest.fixture
def postmark() -> Iterator[FakePostmark]:
    with FakePostmark(server_token="test-token") as fake:
        yield fake


@pytest.fixture
def client(postmark: FakePostmark) -> PostmarkClient:
    return PostmarkClient(server_token="test-token", root_api_url=postmark.url)


# -- Postmark ------------------------------------------------------------------------------------------


def test_batch_answers_one_result_per_message_in_order(postmark: FakePostmark, client: PostmarkClient) -> None:
    postmark.inactive_recipients.add("Bounced@Example.com")

    results = client.emails.send_batch(
        email("ok@example.com", Metadata={"job_id": "1"}),
        email("bounced@example.com"),
        email("not-an-address"),
        email("Jane Doe <jane@example.com>"),
    )

    assert [r["ErrorCode"] for r in results] == [0, 406, 300, 0]
    assert results[0]["Message"] == "OK" and results[0]["To"] == "ok@example.com"
    assert results[0]["MessageID"] and results[0]["SubmittedAt"]
    assert "MessageID" not in results[1] and "inactive" in results[1]["Message"]
    assert results[2]["Message"] == "Invalid 'To' address: 'not-an-address'."
    accepted = postmark.messages
    assert [m["MessageID"] for m in accepted] == [results[0]["MessageID"], results[3]["MessageID"]]
    assert accepted[0]["Metadata"] == {"job_id": "1"}
    assert postmark.messages_to("JANE@example.com")[0]["To"] == "Jane Doe <jane@example.com>"
    assert postmark.batches == [4] and postmark.requests == 1


def test_missing_fields_and_bad_domains_are_per_message_300(client: PostmarkClient) -> None:
    results = client.emails.send_batch(
        {"To": "a@example.com", "TextBody": "no sender"},
        {"From": SENDER, "TextBody": "no recipient"},
        email("user@localhost"),
    )
    assert [r["ErrorCode"] for r in results] == [300, 300, 300]


def test_single_send_refusal_is_http_422(client: PostmarkClient, postmark: FakePostmark) -> None:
    postmark.inactive_recipients.add("gone@example.com")
    assert client.emails.send(**email("ok@example.com"))["ErrorCode"] == 0
    with pytest.raises(ClientError) as refused:
        client.emails.send(**email("gone@example.com"))
    assert refused.value.error_code == 406


def test_wrong_server_token_is_401_error_code_10(postmark: FakePostmark) -> None:
    intruder = PostmarkClient(server_token="wrong", root_api_url=postmark.url)
    with pytest.raises(ClientError) as refused:
        intruder.emails.send_batch(email("ok@example.com"))
    assert refused.value.error_code == 10
    assert postmark.messages == []


def test_injected_failures_then_recovery(postmark: FakePostmark, client: PostmarkClient) -> None:
    postmark.fail_next(500)
    postmark.fail_next(429, {"ErrorCode": 429, "Message": "Slow down"})
    postmark.fail_next(503, "upstream unavailable")  # not JSON: postmarker lets requests' error through
    with pytest.raises(ClientError) as server_error:
        client.emails.send_batch(email("ok@example.com"))
    assert server_error.value.error_code == 100
    with pytest.raises(ClientError, match="Slow down"):
        client.emails.send_batch(email("ok@example.com"))
    with pytest.raises(requests.HTTPError):
        client.emails.send_batch(email("ok@example.com"))
    assert client.emails.send_batch(email("ok@example.com"))[0]["ErrorCode"] == 0
    assert postmark.requests == 4 and len(postmark.messages) == 1


def test_batch_limit_is_500(postmark: FakePostmark, client: PostmarkClient) -> None:
    # postmarker splits client-side, so the fake sees two calls ...
    client.emails.send_batch(*(email(f"lead{i}@example.com") for i in range(501)))
    assert postmark.batches == [500, 1]
    # ... while a raw oversized call is refused whole with ErrorCode 410.
    answer = requests.post(
        f"{postmark.url}/email/batch",
        json=[email("x@example.com")] * 501,
        headers={"X-Postmark-Server-Token": "test-token", "Accept": "application/json"},
        timeout=5,
    )
    assert answer.status_code == 422 and answer.json()["ErrorCode"] == 410


def test_invalid_json_and_unknown_paths(postmark: FakePostmark) -> None:
    headers = {"X-Postmark-Server-Token": "test-token", "Content-Type": "application/json"}
    bad = requests.post(f"{postmark.url}/email/batch", data=b"[{oops", headers=headers, timeout=5)
    assert bad.status_code == 422 and bad.json() == {"ErrorCode": 402, "Message": "Received invalid JSON input."}
    missing = requests.get(f"{postmark.url}/nowhere", headers=headers, timeout=5)
    assert missing.status_code == 404 and "ErrorCode" in missing.json()


def test_outbound_search_filters_by_metadata_and_recipient(postmark: FakePostmark, client: PostmarkClient) -> None:
    sent = client.emails.send_batch(
        email("a@example.com", Metadata={"job_id": "1", "step": "1"}),
        email("b@example.com", Metadata={"job_id": "2"}),
        email("a@example.com", Metadata={"job_id": "3"}),
    )

    found = client.call("GET", "/messages/outbound", count=50, offset=0, metadata_job_id="2")
    assert found["TotalCount"] == 1
    (message,) = found["Messages"]
    assert message["MessageID"] == sent[1]["MessageID"]
    assert message["To"] == [{"Email": "b@example.com", "Name": ""}]
    assert message["Recipients"] == ["b@example.com"] and message["Status"] == "Sent"
    assert message["Metadata"] == {"job_id": "2"} and message["ReceivedAt"]

    by_recipient = client.call("GET", "/messages/outbound", count=50, offset=0, recipient="A@example.com")
    assert [m["MessageID"] for m in by_recipient["Messages"]] == [sent[2]["MessageID"], sent[0]["MessageID"]]
    both = client.call("GET", "/messages/outbound", count=1, offset=1, recipient="a@example.com", metadata_step="1")
    assert both == {"TotalCount": 1, "Messages": []}  # one match, skipped by the offset
    assert len(client.messages.outbound.all(recipient="a@example.com")) == 2  # postmarker's own helper
    assert client.messages.outbound.get(sent[0]["MessageID"]).TextBody == "Hi there"


def test_latency_and_stop(postmark: FakePostmark, client: PostmarkClient) -> None:
    postmark.latency_s = 0.05
    started = time.perf_counter()
    client.emails.send_batch(email("ok@example.com"))
    assert time.perf_counter() - started >= 0.05
    url = postmark.url
    postmark.stop()
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{url}/email", json=email("ok@example.com"), timeout=2)


# -- OpenAI --------------------------------------------------------------------------------------------


class Draft(pydantic.BaseModel):
    subject: str
    body: str


class RichDraft(pydantic.BaseModel):
    subject: str
    body: str
    html: str | None = None


MESSAGES: list[Any] = [
    {"role": "system", "content": "You write short cold emails."},
    {"role": "user", "content": "Write the first touch for Acme's CFO."},
]


@pytest.fixture
def llm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def make_client(fake: FakeOpenAI, max_retries: int = 0, api_key: str = "k") -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=fake.url + "/v1", max_retries=max_retries)


def test_chat_completions_parse_returns_the_model(llm: FakeOpenAI) -> None:
    completion = make_client(llm).chat.completions.parse(model="m", messages=MESSAGES, response_format=Draft)

    assert completion.object == "chat.completion" and completion.model == "m"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.refusal is None
    draft = choice.message.parsed
    assert isinstance(draft, Draft)
    assert "{{first_name}}" in draft.subject and "{{company}}" in draft.body
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    ((path, body),) = llm.calls
    assert path == "/v1/chat/completions" and body["response_format"]["type"] == "json_schema"


def test_nullable_fields_are_null_and_responder_is_pluggable(llm: FakeOpenAI) -> None:
    client = make_client(llm)
    rich = client.chat.completions.parse(model="m", messages=MESSAGES, response_format=RichDraft)
    assert rich.choices[0].message.parsed is not None and rich.choices[0].message.parsed.html is None

    llm.responder = lambda body: {"subject": f"For {body['model']}", "body": "Custom"}
    custom = client.chat.completions.parse(model="gpt-x", messages=MESSAGES, response_format=Draft)
    assert custom.choices[0].message.parsed == Draft(subject="For gpt-x", body="Custom")


def test_responses_parse_returns_output_parsed(llm: FakeOpenAI) -> None:
    response = make_client(llm).responses.parse(model="m", input="Write a cold email.", text_format=Draft)

    assert response.status == "completed"
    assert isinstance(response.output_parsed, Draft)
    assert response.output_text.startswith("{")
    assert response.usage is not None and response.usage.total_tokens > response.usage.output_tokens > 0
    assert llm.calls[0][0] == "/v1/responses" and llm.calls[0][1]["text"]["format"]["type"] == "json_schema"


def test_wrong_key_is_authentication_error(llm: FakeOpenAI) -> None:
    llm.api_key = "secret"
    with pytest.raises(openai.AuthenticationError) as refused:
        make_client(llm, api_key="wrong").chat.completions.parse(model="m", messages=MESSAGES, response_format=Draft)
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    assert make_client(llm, api_key="secret").chat.completions.create(model="m", messages=MESSAGES).choices


def test_rate_limit_surfaces_without_retries_and_is_retried_with_them(llm: FakeOpenAI) -> None:
    llm.fail_next(429, retry_after=0.01)
    with pytest.raises(openai.RateLimitError) as limited:
        make_client(llm, max_retries=0).chat.completions.parse(model="m", messages=MESSAGES, response_format=Draft)
    assert limited.value.response.headers["retry-after"] == "0.01"
    assert limited.value.code == "rate_limit_exceeded" and llm.call_count == 1

    llm.reset()
    llm.fail_next(429, retry_after=0.01)
    completion = make_client(llm, max_retries=1).chat.completions.parse(
        model="m", messages=MESSAGES, response_format=Draft
    )
    assert completion.choices[0].message.parsed is not None and llm.call_count == 2


def test_server_errors_invalid_json_and_unknown_paths(llm: FakeOpenAI) -> None:
    client = make_client(llm)
    llm.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    llm.invalid_json_next()
    with pytest.raises(pydantic.ValidationError):
        client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Draft)
    assert client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Draft).choices[0].message.parsed
    with pytest.raises(openai.NotFoundError):
        client.models.list()


def test_concurrent_async_requests_are_served_in_parallel(llm: FakeOpenAI) -> None:
    llm.latency_s = 0.1

    async def burst() -> list[Any]:
        async with openai.AsyncOpenAI(api_key="k", base_url=llm.url + "/v1", max_retries=0) as client:
            calls = [
                client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Draft) for _ in range(40)
            ]
            return await asyncio.gather(*calls)

    started = time.perf_counter()
    completions = asyncio.run(burst())
    assert all(c.choices[0].message.parsed for c in completions)
    assert time.perf_counter() - started < 2.0  # 40 x 0.1 s would take 4 s if served one at a time
    assert llm.call_count == 40
