"""`make run`'s launcher: the Dagster UI and the API come up, and one interrupt stops them and everything
they started (Dagster's webserver, daemon and code server included)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from outreach_pipeline.db.migrate import upgrade_database

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 90
SHUTDOWN_S = 45


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (the servers' own children included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z":  # a zombie has exited already
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads the process tree from /proc")
def test_the_launcher_serves_both_doors_and_an_interrupt_stops_everything(tmp_path: Path) -> None:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", dagster_home)
    data_dir = tmp_path / "data"
    database_url = f"sqlite:///{data_dir / 'outreach.db'}"
    data_dir.mkdir()
    upgrade_database(database_url)
    dagster_port, api_port = _free_port(), _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "DATA_DIR": str(data_dir), "DATABASE_URL": database_url,
           "DAGSTER_PORT": str(dagster_port), "API_PORT": str(api_port)}
    # Started with SIGINT ignored, as a shell starts `cmd &`: the old recipe's servers never saw the Ctrl-C.
    launcher = subprocess.Popen([sys.executable, "-m", "outreach_pipeline.run_product"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    started: set[int] = set()
    try:
        deadline = time.monotonic() + STARTUP_S
        urls = [f"http://127.0.0.1:{api_port}/health", f"http://127.0.0.1:{dagster_port}/server_info"]
        while not all(_answers(url) for url in urls):
            assert launcher.poll() is None, "the launcher stopped on its own"
            assert time.monotonic() < deadline, "the UI and the API did not both answer"
            time.sleep(1)
        started = _descendants(launcher.pid)
        assert len(started) >= 4  # dagster dev, its webserver, daemon and code server; uvicorn

        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=SHUTDOWN_S) == 0
        left = {pid for pid in started if _running(pid)}
        assert not left, f"still running after the interrupt: {sorted(left)}"
        assert not any(_answers(url) for url in urls)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in started:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
