"""One send run spread over several worker processes (`SendPolicy.processes`).

A process's sending threads share one interpreter lock, and composing and recording a batch is Python work,
so one process sends with about one core however many batches it has in flight. Each worker process runs
the same loop, one claimer and `concurrency` senders (delivery.run_workers), against the same database.
Claims take jobs with FOR UPDATE SKIP LOCKED, so the workers never take the same job, just as separate runs
on separate machines never do; nothing here coordinates them but a stop flag.

The caller has reconciled and deferred once before the workers start. A refused account in one worker stops
them all (the shared flag); the jobs to hand back to PENDING are released by the caller once every worker
has stopped, as in one process; the workers' reports are summed into the caller's.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import traceback
from dataclasses import dataclass, replace
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

from outreach_pipeline.core.compose import SenderConfig
from outreach_pipeline.core.delivery import Claim, SendPolicy, _Run, run_workers
from outreach_pipeline.db.session import create_db_engine, make_session_factory
from outreach_pipeline.mail.message import Mailer, MailerAccountError

log = logging.getLogger(__name__)


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
    error: str | None = None  # the worker's traceback


def _context() -> ForkServerContext:
    # A fork server: each worker is forked from a small process that has imported the send path once,
    # so starting one is quick and inherits none of the caller's threads or database connections.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # takes effect when the fork server first starts
    return context


def can_start_processes() -> bool:
    """False inside a daemonic process (some executors run steps in one), which may not have children."""
    return not multiprocessing.current_process().daemon


def run_in_processes(run: _Run) -> None:
    """Run `run` in `run.policy.processes` worker processes; their reports are added to `run.report`, their
    jobs to release to `run.to_release`, a refused account to `run.account_error`. Raises SendProcessError
    once all have stopped if any failed."""
    context = _context()
    stop = context.Event()
    url = run.factory.kw["bind"].url.render_as_string(hide_password=False)
    work = _Work(url, run.mailer, run.config, run.due_before, replace(run.policy, processes=1), run.now)
    workers = [_start(context, work, stop, n) for n in range(run.policy.processes)]
    try:
        outcomes = [_outcome_of(process, answers) for process, answers in workers]
    except BaseException:  # interrupted while waiting (a run being cancelled): every worker stops after its batch
        stop.set()
        for process, _ in workers:
            process.join()
        raise
    failures = [outcome.error for outcome in outcomes if outcome.error]
    for outcome in outcomes:
        run.report.add(**outcome.counts)
        run.report.sent_per_process.append(outcome.counts.get("sent", 0))
        with run.report._lock:
            run.report.reasons.update(outcome.reasons)
        run.to_release.extend(outcome.to_release)
        if outcome.account_error and run.account_error is None:
            run.account_error = MailerAccountError(outcome.account_error)
    if failures:
        raise SendProcessError(f"{len(failures)} of {len(outcomes)} send processes failed; the first:\n{failures[0]}")


def _start(context: ForkServerContext, work: _Work, stop: Event, number: int) -> tuple[BaseProcess, Connection]:
    answers, answer = context.Pipe(duplex=False)
    process = context.Process(target=_work_in_process, args=(work, stop, answer), name=f"send-process-{number}")
    process.start()
    answer.close()  # ours closed: a worker that dies without answering ends our recv with EOFError
    return process, answers


def _outcome_of(process: BaseProcess, answers: Connection) -> _Outcome:
    try:
        outcome: _Outcome = answers.recv()
    except EOFError:
        process.join()
        return _Outcome({}, {}, [], error=f"{process.name} exited with code {process.exitcode} without a report")
    process.join()
    return outcome


def _work_in_process(work: _Work, stop: Event, answer: Connection) -> None:
    """A worker: the claim/send loop over its own connections, its outcome sent back to the caller."""
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
        log.exception("send process failed")
    finally:
        engine.dispose()
    answer.send(_Outcome(run.report.as_metadata(), dict(run.report.reasons), run.to_release,
                         str(run.account_error) if run.account_error else None, error))
    answer.close()


def _stop_when_orphaned(stop: Event) -> None:
    """Stop after the batch in hand if the process that started us is gone (its run was killed): nobody would
    read our report, and a killed run should not go on sending."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.warning("the send run's process is gone; stopping after the batch in hand")
                stop.set()

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
