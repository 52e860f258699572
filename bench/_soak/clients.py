"""
The soak's clients: one writer per application, each sending a numbered
write at a time through a node address chosen at random (so through the
proxies of the nodes that do not run it, too), and recording every write
it saw acknowledged, with when and through which node.

A write is acknowledged only when the application answered with its id
after doing it: MariaDB printed the id the same client selected after the
INSERT committed (autocommit), httpd's CGI answered "ok ID" after
appending the id to the volume.  Anything else (a refused or timed-out
connection, a client killed mid-request) is not acknowledged: the write
may or may not be there.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
import time
import urllib.request
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .cluster import DB_PASSWORD, DB_PORT, WEB_PORT

MARIADB = shutil.which("mariadb") or "mysql"
PAUSE = 0.1


class History:
    """Everything one application's writer saw: id -> (time acknowledged,
    node address); every attempt's outcome counted."""

    def __init__(self, app: str):
        self.app = app
        self.acked: Dict[int, Tuple[float, str]] = {}
        self.attempts = 0
        self.failures = 0
        self.highest_sent = 0
        self.lock = threading.Lock()

    def ack(self, write_id: int, when: float, via: str) -> None:
        with self.lock:
            self.acked[write_id] = (when, via)

    def ack_times(self) -> List[float]:
        with self.lock:
            return sorted(t for t, _ in self.acked.values())

    def longest_gap(self, start: float, end: float) -> Tuple[float, float]:
        """The longest time in [start, end] with no write acknowledged:
        (seconds, when it began)."""
        times = [t for t in self.ack_times() if start <= t <= end]
        points = [start] + times + [end]
        best = (0.0, start)
        for a, b in zip(points, points[1:]):
            if b - a > best[0]:
                best = (b - a, a)
        return best


def mysql_argv(address: str, port: int = DB_PORT, timeout: int = 3) -> List[str]:
    return [MARIADB, "-h", address, "-P", str(port), "-uroot", "-p" + DB_PASSWORD,
            "--connect-timeout=%d" % (timeout,), "-N", "-B"]


def mysql(address: str, sql: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run(mysql_argv(address) + ["-e", sql], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class Writer:
    """Writes one at a time until stopped (or ``limit`` writes)."""

    def __init__(self, history: History, addresses: Sequence[str], seed: int,
                 first_id: int = 1, limit: int = 200000):
        self.history = history
        self.addresses = list(addresses)
        self.rng = random.Random(seed)
        self.next_id = first_id
        self.limit = limit
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="writer-" + history.app)

    def start(self) -> "Writer":
        self.thread.start()
        return self

    def _run(self) -> None:
        for _ in range(self.limit):
            if self.stopped.is_set():
                return
            write_id = self.next_id
            self.next_id += 1
            address = self.rng.choice(self.addresses)
            self.history.attempts += 1
            self.history.highest_sent = max(self.history.highest_sent, write_id)
            try:
                ok = self.write(address, write_id)
            except Exception:  # a client error is a write not acknowledged
                ok = False
            if ok:
                self.history.ack(write_id, time.time(), address)
            else:
                self.history.failures += 1
            self.stopped.wait(PAUSE)

    def write(self, address: str, write_id: int) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(30)


class DbWriter(Writer):
    """INSERTs a row per write, one mariadb client each."""

    def write(self, address: str, write_id: int) -> bool:
        sql = ("INSERT INTO soak.rows (id, via, at) VALUES (%d, '%s', NOW(6)); "
               "SELECT %d;" % (write_id, address, write_id))
        try:
            result = subprocess.run(mysql_argv(address) + ["-e", sql],
                                    capture_output=True, text=True, timeout=8,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0 and result.stdout.strip() == str(write_id)


class WebWriter(Writer):
    """Asks the append CGI to append the id, through the HTTP port."""

    def write(self, address: str, write_id: int) -> bool:
        try:
            with urllib.request.urlopen("http://%s:%d/cgi-bin/w?%d" % (
                    address, WEB_PORT, write_id), timeout=4) as response:
                return response.read().decode().strip() == "ok %d" % (write_id,)
        except OSError:
            return False


def write_once(app: str, address: str, ids: Iterator[int], history: History,
               timeout: float = 60.0) -> Optional[str]:
    """One write through ``address``, tried again (with a new id: one not
    acknowledged may still be there) until acknowledged or ``timeout``;
    None once acknowledged (and recorded), else the last error."""
    writer = (DbWriter if app == "db" else WebWriter)(history, [address], 0)
    deadline = time.monotonic() + timeout
    while True:
        write_id = next(ids)
        history.attempts += 1
        history.highest_sent = max(history.highest_sent, write_id)
        try:
            if writer.write(address, write_id):
                history.ack(write_id, time.time(), address)
                return None
            error = "not acknowledged"
        except Exception as e:  # keep trying until the deadline
            error = "%s: %s" % (type(e).__name__, e)
        history.failures += 1
        if time.monotonic() > deadline:
            return error
        time.sleep(1)
