"""`make run`: the Dagster UI with its daemon, and the API, together; Ctrl-C (or SIGTERM) stops them all.

    python -m outreach_pipeline.run_product    # ports from DAGSTER_PORT (3000) and API_PORT (8000)

Each server runs in a process group of its own, and stopping signals the whole group: a shell's `cmd &`
starts its children with SIGINT ignored, so Ctrl-C used to stop the API and leave Dagster's webserver,
daemon and code server running. Each group gets SIGINT, then SIGTERM, then SIGKILL, a grace apart.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

GRACE_S = 15.0  # per signal, before the next, harder one
POLL_S = 0.5


def commands(env: Mapping[str, str]) -> dict[str, list[str]]:
    bin_dir = Path(sys.executable).parent
    return {
        "dagster": [str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-p", env.get("DAGSTER_PORT", "3000")],
        "api": [str(bin_dir / "uvicorn"), "outreach_api.app:app", "--port", env.get("API_PORT", "8000")],
    }


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # the whole group is gone already
        pass


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    process.poll()
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(processes: Mapping[str, subprocess.Popen[bytes]]) -> None:
    """Stop every server and everything it started, politely first."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        running = [p for p in processes.values() if _group_alive(p)]
        if not running:
            return
        for process in running:
            _signal_group(process, signum)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(_group_alive(p) for p in running):
            time.sleep(POLL_S)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the servers the way Ctrl-C does


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Handled here even when started with SIGINT ignored (a shell's background job): the servers, started
    # after, then get the default handling back, as exec resets every signal a process handles.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    env = dict(os.environ)
    # A group of its own each: the terminal's Ctrl-C reaches this process only, which stops them in order.
    processes = {name: subprocess.Popen(command, env=env, start_new_session=True)
                 for name, command in commands(env).items()}
    try:
        while all(p.poll() is None for p in processes.values()):
            time.sleep(POLL_S)
        stopped = next(name for name, p in processes.items() if p.returncode is not None)
        log.error("%s stopped (exit code %s); stopping the rest", stopped, processes[stopped].returncode)
        return 1
    except KeyboardInterrupt:
        log.info("stopping the Dagster UI, its daemon and the API")
        return 0
    finally:
        stop(processes)


if __name__ == "__main__":
    sys.exit(main())
