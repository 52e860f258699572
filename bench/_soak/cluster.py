"""
The soak's applications, its deployment files and its flocker-deploy runs.

``db`` is MariaDB (flocker-lab/mariadb) with a standby replicated every
2 s; ``web`` is busybox httpd serving its volume, with a CGI script in the
volume that appends each request's id to a file and answers only once it
is written, replicated every 3 s.  Both are published on every node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

from .schedule import APPS, Placement

BIN = os.path.dirname(sys.executable)
DB_PORT = 3306
WEB_PORT = 8080
DB_PASSWORD = "soak"
PORTS = {"db": DB_PORT, "web": WEB_PORT}
INTERVALS = {"db": 2, "web": 3}
MOUNTPOINTS = {"db": "/var/lib/mysql", "web": "/data"}
# flocker-deploy's limit on a silent node (a node powered off mid-deploy
# is noticed after it), and ours on flocker-deploy: past it, it has
# outlived its own timeouts.
DEPLOY_TIMEOUT = 15
DEPLOY_HARD_LIMIT = 240

APPLICATIONS = {
    "db": {
        "image": "flocker-lab/mariadb",
        "environment": {"MYSQL_ROOT_PASSWORD": DB_PASSWORD},
        "ports": [{"internal": 3306, "external": DB_PORT}],
        "volume": {"mountpoint": MOUNTPOINTS["db"],
                   "replication_interval": "%ds" % (INTERVALS["db"],)},
    },
    "web": {
        "image": "flocker-lab/busybox",
        "ports": [{"internal": 80, "external": WEB_PORT}],
        "volume": {"mountpoint": MOUNTPOINTS["web"],
                   "replication_interval": "%ds" % (INTERVALS["web"],)},
    },
}
assert sorted(APPLICATIONS) == sorted(APPS)

# Appends the request's id to the volume and answers once it is written.
APPEND_CGI = """#!/bin/sh
echo "$QUERY_STRING" >> /data/acked
echo Content-Type: text/plain
echo
echo "ok $QUERY_STRING"
"""

DB_SCHEMA = ("CREATE DATABASE IF NOT EXISTS soak; "
             "CREATE TABLE IF NOT EXISTS soak.rows ("
             "seq BIGINT AUTO_INCREMENT PRIMARY KEY, id BIGINT NOT NULL, "
             "via VARCHAR(15) NOT NULL, at DATETIME(6) NOT NULL) ENGINE=InnoDB;")


def application_text() -> str:
    return json.dumps({"version": 1, "applications": APPLICATIONS}, indent=1,
                      sort_keys=True)


def deployment_text(placement: Placement, addresses: Dict[str, str]) -> str:
    """The deployment file of ``placement`` (node names -> ``addresses``)."""
    nodes: Dict[str, List[str]] = {addresses[n]: [] for n in sorted(addresses)}
    for app, node in placement.nodes:
        nodes[addresses[node]].append(app)
    return json.dumps({
        "version": 1, "nodes": nodes,
        "standby": {app: [addresses[node]] for app, node in placement.standby},
    }, indent=1, sort_keys=True)


class Deploy:
    """One flocker-deploy run, in the background; its output is kept."""

    def __init__(self, lab, workdir: str, tag: str, placement: Placement,
                 addresses: Dict[str, str]):
        self.tag = tag
        self.placement = placement
        self.dep = os.path.join(workdir, "deployment-%s.yml" % (tag,))
        self.app = os.path.join(workdir, "application.yml")
        self.log = os.path.join(workdir, "deploy-%s.log" % (tag,))
        with open(self.dep, "w") as f:
            f.write(deployment_text(placement, addresses))
        if not os.path.exists(self.app):
            with open(self.app, "w") as f:
                f.write(application_text())
        env = dict(os.environ)
        env.update(lab.env())
        down = ["--down", ",".join(addresses[n] for n in placement.down)] \
            if placement.down else []
        self.argv = [os.path.join(BIN, "flocker-deploy"), "--timeout",
                     str(DEPLOY_TIMEOUT)] + down + [self.dep, self.app]
        self.started = time.time()
        self.ended: Optional[float] = None
        self.status: Optional[int] = None
        self.outlived = False
        self._out = open(self.log, "w+")
        self.process = subprocess.Popen(
            self.argv, env=env, stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, limit: float = DEPLOY_HARD_LIMIT) -> int:
        """Its exit status; killed (and ``outlived``) past ``limit``."""
        try:
            self.status = self.process.wait(max(0.0, self.started + limit - time.time()))
        except subprocess.TimeoutExpired:
            self.outlived = True
            self.process.kill()
            self.status = self.process.wait()
        self.ended = time.time()
        self._out.close()
        return self.status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()


_WINDOW = re.compile(
    r"^take-over: (?P<app>\S+): last replica on (?P<source>\S+) is from "
    r"(?P<snapshot>\d\d:\d\d:\d\d)")
_UNKNOWN = re.compile(
    r"^take-over: (?P<app>\S+): the surviving copy on \S+ has no dated snapshot")


def stated_windows(output: str, near: float) -> Dict[str, Optional[float]]:
    """
    Per application a take-over in ``output`` took over: the start of the
    stated loss window ("writes after HH:MM:SS may be lost"), as a unix
    time (the whole second, the day taken from ``near``); None when the
    deploy said how much may be lost is unknown.
    """
    found: Dict[str, Optional[float]] = {}
    for line in output.splitlines():
        match = _WINDOW.match(line)
        if match:
            found[match.group("app")] = clock_time(match.group("snapshot"), near)
            continue
        match = _UNKNOWN.match(line)
        if match:
            found[match.group("app")] = None
    return found


def clock_time(hms: str, near: float) -> float:
    """The unix time of local clock time ``hms`` closest to ``near``."""
    hours, minutes, seconds = (int(x) for x in hms.split(":"))
    candidates = []
    for day in (-1, 0, 1):
        t = time.localtime(near + day * 86400)
        candidates.append(time.mktime((t.tm_year, t.tm_mon, t.tm_mday, hours,
                                       minutes, seconds, 0, 0, -1)))
    return min(candidates, key=lambda c: abs(c - near))
