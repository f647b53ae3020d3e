"""A fake provider served from its own process, so its threads do not compete with the code measured."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


class RemoteFake:
    """Starts `serve(connection, *args)` in a child process; it sends its URL, then answers commands."""

    def __init__(self, serve: Callable[..., None], *args: Any) -> None:
        self._connection, child = multiprocessing.Pipe()
        self._process = multiprocessing.Process(target=serve, args=(child, *args), daemon=True)
        self._process.start()
        self.url: str = self._connection.recv()
        self.pid: int = self._process.pid  # type: ignore[assignment]  # set once started

    def ask(self, command: str) -> dict[str, int]:
        self._connection.send(command)
        return self._connection.recv()  # type: ignore[no-any-return]

    def stop(self) -> None:
        self._connection.send("stop")
        self._process.join(timeout=10)


