"""One send run spread over several worker processes (`SendPolicy.processes`).

A process's sending threads share one interpreter lock, and composing and recording a batch is Python work,
so one process sends with about one core however many batches it has in flight. Each worker process runs
the same loop, one claimer and `concurrency` senders (delivery.run_workers), against the same database.
Claims take jobs with FOR UPDATE SKIP LOCKED, so the workers never take the same job, just as separate runs
on separate machines never do; nothing here coordinates them but a stop flag.

The caller has reconciled and deferred once before the workers start. The first worker to fail or to meet a
refused account stops them all (the shared flag), as a failing thread stops its process's others. Every
worker reports back, also when the run is interrupted: the jobs to hand back to PENDING are released by the
caller once all have stopped, as in one process, and the reports are summed. A worker whose run process is
gone (killed) stops after the batch in hand.

Workers are spawned (a fresh interpreter each, about half a second to import the send path): they inherit the
run's environment and output as they are when the run starts, and none of its threads or connections.
They are given the database URL only; engine options of the caller's engine do not travel.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from dataclasses import dataclass, replace
from datetime import datetime
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess

from outreach_pipeline.core.compose import SenderConfig
from outreach_pipeline.core.delivery import Claim, SendPolicy, _Run, run_workers
from outreach_pipeline.db.session import create_db_engine, make_session_factory
from outreach_pipeline.mail.message import Mailer, MailerAccountError

log = logging.getLogger(__name__)


class SharedStop:
    """The run's stop flag, one byte of shared memory and no lock: a worker killed while holding a
    multiprocessing Event's lock would leave every other process waiting on that lock forever."""

    def __init__(self, context: SpawnContext) -> None:
        self._flag = context.RawValue("b", 0)

    def is_set(self) -> bool:
        return bool(self._flag.value)

    def set(self) -> None:
        self._flag.value = 1

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the flag is set, polled until it is or `timeout` seconds pass (used only while backing off
        or watching, where a twentieth of a second does not matter)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True


POLL_S = 0.05


class SendProcessError(RuntimeError):
    """A worker process failed or died; jobs it had claimed and not settled are left for the reconciler."""


@dataclass(frozen=True)
class _Work:
    """What a worker process needs, all of it picklable: it is sent to a fresh process."""

    database_url: str
    mailer: Mailer
    config: SenderConfig
    due_before: datetime
    policy: SendPolicy
    now: datetime


@dataclass
class _Outcome:
    counts: dict[str, int]
    reasons: dict[str, int]
    to_release: list[tuple[Claim, str]]
    account_error: str | None = None
    error: str | None = None  # the worker's traceback, or how it died


def can_start_processes() -> bool:
    """False inside a daemonic process (some executors run steps in one), which may not have children."""
    return not multiprocessing.current_process().daemon


def run_in_processes(run: _Run) -> None:
    """Run `run` in `run.policy.processes` worker processes; their reports are added to `run.report`, their
    jobs to release to `run.to_release`, a refused account to `run.account_error`. Raises SendProcessError
    once all have stopped if any failed."""
    context = multiprocessing.get_context("spawn")
    stop = SharedStop(context)
    work = _picklable(_Work(run.factory.kw["bind"].url.render_as_string(hide_password=False), run.mailer,
                            run.config, run.due_before, replace(run.policy, processes=1), run.now))
    workers: dict[Connection, BaseProcess] = {}
    outcomes: list[_Outcome] = []
    try:
        for number in range(run.policy.processes):
            answers, process = _start(context, work, stop, number)
            workers[answers] = process
        _collect(workers, stop, outcomes)
    except BaseException:  # interrupted (a run being cancelled): every worker stops after its batch and reports
        stop.set()
        _drain(workers, stop, outcomes)
        raise
    finally:
        _merge(run, outcomes)
    failures = [outcome.error for outcome in outcomes if outcome.error]
    if failures and run.account_error is None:  # a refused account says more, and dispatch_due raises it
        raise SendProcessError(f"{len(failures)} of {len(outcomes)} send processes failed; the first:\n{failures[0]}")
    for failure in failures:
        log.error("a send process failed: %s", failure)


def _picklable(work: _Work) -> _Work:
    try:
        pickle.dumps(work)
    except Exception as error:
        raise TypeError(f"sending from several processes (SEND_PROCESSES > 1) needs a mailer that can be sent to "
                        f"another process; {type(work.mailer).__name__} cannot: {error}") from error
    return work


def _start(context: SpawnContext, work: _Work, stop: SharedStop, number: int) -> tuple[Connection, BaseProcess]:
    answers, answer = context.Pipe(duplex=False)
    process = context.Process(target=_work_in_process, args=(work, stop, answer), name=f"send-process-{number}")
    try:
        process.start()
    finally:
        answer.close()  # ours closed: a worker that dies without answering ends our wait with EOF
    return answers, process


def _collect(workers: dict[Connection, BaseProcess], stop: SharedStop, outcomes: list[_Outcome]) -> None:
    """Read every worker's outcome as it comes (a large one blocks its worker until read) into `outcomes`,
    removing the worker from `workers` once its outcome is kept; the first failure stops the others."""
    while workers:
        for answers in wait(list(workers)):
            outcome = _read(answers, workers[answers])  # type: ignore[index]
            outcomes.append(outcome)
            process = workers.pop(answers)  # type: ignore[call-overload]
            answers.close()
            process.join()
            if outcome.error:
                stop.set()


def _drain(workers: dict[Connection, BaseProcess], stop: SharedStop, outcomes: list[_Outcome]) -> None:
    """After an interrupt: read the rest, however many more interrupts come, so every claim a worker could
    not send is handed back, and no worker waits forever to give its outcome."""
    while workers:
        try:
            _collect(workers, stop, outcomes)
        except KeyboardInterrupt:
            log.warning("waiting for %d send process(es) to end their batch in hand", len(workers))


def _read(answers: Connection, process: BaseProcess) -> _Outcome:
    try:
        return answers.recv()  # type: ignore[no-any-return]
    except (EOFError, OSError):  # died before or while answering
        process.join()
        return _Outcome({}, {}, [], error=f"{process.name} exited with code {process.exitcode} without a report")


def _merge(run: _Run, outcomes: list[_Outcome]) -> None:
    for outcome in outcomes:
        run.report.merge(outcome.counts, outcome.reasons)
        run.to_release.extend(outcome.to_release)
        if outcome.account_error and run.account_error is None:
            run.account_error = MailerAccountError(outcome.account_error)


def _work_in_process(work: _Work, stop: SharedStop, answer: Connection) -> None:
    """A worker: the claim/send loop over its own connections, its outcome sent back to the caller."""
    # Stopped by the run only (the shared flag), never by a Ctrl-C to the process group: an interrupt lands
    # anywhere, and a claim it cut in half would stay SENDING until its lease ran out.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine = create_db_engine(work.database_url, pool_size=work.policy.concurrency + 2)
    run = _Run(make_session_factory(engine), work.mailer, work.config, work.due_before, work.policy, work.now,
               stop=stop)
    _stop_when_orphaned(stop)
    error = None
    try:
        run_workers(run)
    except BaseException:
        stop.set()
        error = traceback.format_exc()
        log.exception("send process %d failed", os.getpid())
    outcome = _Outcome(run.report.as_metadata(), dict(run.report.reasons), run.to_release,
                       str(run.account_error) if run.account_error else None, error)
    try:
        with answer:
            answer.send(outcome)
    except OSError:  # the run's process is gone: nobody else will hand our unsent claims back
        run.release_all()
    finally:
        engine.dispose()


def _stop_when_orphaned(stop: SharedStop) -> None:
    """Stop after the batch in hand if the run's process is gone (killed): a killed run should not go on
    sending, and nobody would read our report."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        while not stop.wait(0.5):
            if not parent.is_alive():
                log.warning("the send run's process is gone; stopping after the batch in hand")
                stop.set()

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
