"""Webhook events from concurrent requests, applied several to a transaction: one commit serves many.

Postmark posts events one per request, and under load most of a request's cost was its own transaction:
checkout, BEGIN, COMMIT with its disk flush, checkin. Here one writer thread per process takes whatever
events are waiting (up to `max_batch`) and applies them in one transaction, with shared statements
(core/events.py's `handle_postmark_events`). A request is answered only after the transaction holding its
event has committed, so an acknowledged event is never lost. When a batch fails in the database (a value
PostgreSQL refuses, a deadlock with the other process), it is rolled back and its events are applied again
one by one, so one bad event cannot fail the others.

Before a batch closes, the writer lets the requests' event loop turn twice (a group commit, like
PostgreSQL's commit_delay, but timed by the loop rather than the clock): a request whose bytes have arrived
reaches `submit` within two turns (its connection's callback starts the request's task, the task runs up
to `submit`), so the events of every request the loop was handling join this batch instead of starting a
batch of one or two each. Under load this took batches from about 10-20 events to 20-30 and a webhook's
CPU by about a quarter; with nothing else waiting it costs two idle turns, well under a millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.core.events import EventResult, handle_postmark_event, handle_postmark_events
from outreach_pipeline.db.session import session_scope

log = logging.getLogger(__name__)

MAX_BATCH = 64
# The event loop turns the writer lets pass before closing a batch, and the longest it waits for them (a loop
# busy with one large request must not hold back the events already waiting).
LOOP_TURNS = 2
LOOP_WAIT_BOUND_S = 0.002


@dataclass
class _Pending:
    payload: dict[str, Any]
    record_type: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EventResult]


_STOP = object()


class EventBatcher:
    def __init__(self, sessions: sessionmaker[Session], max_batch: int = MAX_BATCH,
                 loop_wait_bound: float = LOOP_WAIT_BOUND_S) -> None:
        self.sessions = sessions
        self.max_batch = max_batch
        self.loop_wait_bound = loop_wait_bound
        # The current writer and its own queue; each writer gets a fresh queue, so a stop queued for one writer
        # can never be taken by the next. Both change only under the lock.
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def submit(self, payload: dict[str, Any], record_type: str) -> EventResult:
        """The event's result once its transaction has committed; InvalidInputError for a payload that is
        not an event."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EventResult] = loop.create_future()
        self._put(_Pending(payload, record_type, loop, future))
        return await future

    def stop(self) -> None:
        """Apply what is queued, then end the writer thread. A later submit starts a new writer."""
        with self._lock:  # one with submit's put: an event queued before the stop is applied by this writer
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join()

    def _put(self, pending: _Pending) -> None:
        """Queue `pending` for the current writer, starting one (with a queue of its own) if there is none."""
        with self._lock:
            if self._thread is None:
                fresh: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
                thread = threading.Thread(target=self._run, args=(fresh,), name="webhook-writer", daemon=True)
                thread.start()
                self._queue, self._thread = fresh, thread
            self._queue.put(pending)

    def _run(self, events: queue.SimpleQueue[_Pending | object]) -> None:
        while True:
            first = events.get()
            if first is _STOP:
                return
            batch: list[_Pending] = [first]  # type: ignore[list-item]
            stopping = self._take_waiting(events, batch)
            if not stopping and len(batch) < self.max_batch:
                _let_loop_turn(batch[0].loop, LOOP_TURNS, self.loop_wait_bound)
                stopping = self._take_waiting(events, batch)
            self._apply(batch)
            if stopping:
                return

    def _take_waiting(self, events: queue.SimpleQueue[_Pending | object], batch: list[_Pending]) -> bool:
        """Add the events waiting to `batch`, up to its limit; whether the stop came."""
        while len(batch) < self.max_batch:
            try:
                item = events.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)  # type: ignore[arg-type]
        return False

    def _apply(self, batch: list[_Pending]) -> None:
        try:
            with session_scope(self.sessions) as session:
                results = handle_postmark_events(session, [(p.payload, p.record_type) for p in batch])
        except Exception:  # noqa: BLE001 - a database error: each event gets its own transaction and answer
            if len(batch) > 1:
                log.info("webhook batch failed; applying its %d events one by one", len(batch), exc_info=True)
            _settle([(pending, self._alone(pending)) for pending in batch])
            return
        _settle([(pending, _refusal(pending, result) if isinstance(result, ValueError) else result)
                 for pending, result in zip(batch, results, strict=True)])

    def _alone(self, pending: _Pending) -> EventResult | BaseException:
        try:
            with session_scope(self.sessions) as session:
                return _one(session, pending)
        except Exception as error:  # noqa: BLE001 - handed to the request, whose error handlers answer it
            return error


def _one(session: Session, pending: _Pending) -> EventResult | InvalidInputError:
    try:
        return handle_postmark_event(session, pending.payload, pending.record_type)
    except ValueError as error:
        return _refusal(pending, error)


def _refusal(pending: _Pending, error: ValueError) -> InvalidInputError:
    """A payload that is not an event is refused before anything of it is written, so the batch's
    transaction stays good for the others."""
    return InvalidInputError(f"Not a Postmark {pending.record_type} payload: {error}")


def _let_loop_turn(loop: asyncio.AbstractEventLoop, turns: int, bound: float) -> None:
    """Return once `loop` has run `turns` rounds of its ready callbacks (or after `bound` seconds)."""
    turned = threading.Event()

    def countdown(left: int) -> None:
        if left <= 1:
            turned.set()
        else:
            loop.call_soon(countdown, left - 1)  # runs in the loop's next round

    try:
        loop.call_soon_threadsafe(countdown, turns)
    except RuntimeError:  # the loop has closed: nothing more can come from it
        return
    turned.wait(bound)


def _settle(answers: list[tuple[_Pending, EventResult | BaseException]]) -> None:
    """Hand each request its answer on its own event loop: one wake-up per loop for the whole batch, not one
    per event (each is a write to the loop's wake-up pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, EventResult | BaseException]]] = {}
    for pending, result in answers:
        by_loop.setdefault(pending.loop, []).append((pending, result))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_results, settled)
        except RuntimeError:  # the requests' event loop has closed: nobody is waiting for these answers
            log.debug("%d webhook answer(s) dropped: their event loop is closed", len(settled))


def _set_results(settled: list[tuple[_Pending, EventResult | BaseException]]) -> None:
    for pending, result in settled:
        if pending.future.done():  # the request was cancelled (the client went away)
            continue
        if isinstance(result, BaseException):
            pending.future.set_exception(result)
        else:
            pending.future.set_result(result)
