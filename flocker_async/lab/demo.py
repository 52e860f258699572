"""
``make demo``: Flocker's MySQL tutorial on a two-node lab on this machine.

Starts a lab, deploys the MySQL example (with the lab's MariaDB image and
node addresses) to node 1, writes rows through node 1's address, moves the
application to node 2 by deploying the "moved" file, reads the rows back
through both addresses, shows ``docker ps`` on both nodes and node 1's
flocker nat rules, and prints how long MySQL could not be reached during
the move.  The lab is taken down at the end unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from . import Lab
from ._lab import LabError

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "config", "examples")
TUTORIAL_ADDRESSES = ("172.16.255.250", "172.16.255.251")
PASSWORD = "clusterhq"


def say(text=""):
    print(text, flush=True)


def show(argv, env=None, check=True):
    say("$ " + " ".join(argv))
    result = subprocess.run(argv, env=env, text=True, capture_output=True)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        say(output)
    if check and result.returncode != 0:
        raise SystemExit("demo: %s failed (exit %d)" % (argv[0], result.returncode))
    return result


def tool(name):
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else name


def adapt(example: str, n1: str, n2: str) -> str:
    """The tutorial's file, pointed at the lab's nodes and image."""
    with open(os.path.join(EXAMPLES, example)) as f:
        text = f.read()
    return (text.replace(TUTORIAL_ADDRESSES[0], n1).replace(TUTORIAL_ADDRESSES[1], n2)
            .replace('"mysql:5.6.17"', '"flocker-lab/mariadb"'))


class Prober(threading.Thread):
    """Connects to MySQL through every address every 50 ms and records when
    a server greeting came back; bounded by ``limit`` seconds."""

    def __init__(self, addresses, port=3306, limit=300.0):
        super().__init__(daemon=True)
        self.addresses = addresses
        self.port = port
        self.limit = limit
        self.successes = []
        self.refused = 0
        self.stop_event = threading.Event()

    def run(self):
        end = time.monotonic() + self.limit
        while not self.stop_event.is_set() and time.monotonic() < end:
            for address in self.addresses:
                try:
                    with socket.create_connection((address, self.port), timeout=1) as s:
                        s.settimeout(1)
                        if s.recv(16):
                            self.successes.append(time.monotonic())
                except (ConnectionRefusedError, ConnectionResetError):
                    self.refused += 1
                except OSError:
                    pass
            time.sleep(0.05)

    def longest_gap(self, start, end):
        points = [start] + [t for t in self.successes if start <= t <= end] + [end]
        return max(b - a for a, b in zip(points, points[1:]))


def mysql(address, sql, timeout=120.0):
    argv = [shutil.which("mariadb") or "mysql", "-h", address, "-uroot",
            "-p" + PASSWORD, "--connect-timeout=5", "-e", sql]
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(argv, text=True, capture_output=True)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        time.sleep(1)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="make demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true",
                        help="leave the lab running afterwards (make demo KEEP=1)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it creates network namespaces, "
                         "ZFS pools and dockerds)")
    lab = Lab()
    workdir = tempfile.mkdtemp(prefix="flocker-demo-")
    try:
        say("== 1. A two-node cluster on this machine")
        show([tool("flocker-lab"), "up", "--nodes", "2"])
        n1, n2 = [n.address for n in lab.nodes[:2]]
        env = dict(os.environ)
        env.update(lab.env())
        files = {}
        for name in ("mysql-application.yml", "mysql-deployment.yml",
                     "mysql-deployment-moved.yml"):
            files[name] = os.path.join(workdir, name)
            with open(files[name], "w") as f:
                f.write(adapt(name, n1, n2))
        say()
        say("== 2. The tutorial's files (config/examples, with this lab's "
            "addresses and MariaDB image)")
        for name in ("mysql-application.yml", "mysql-deployment.yml",
                     "mysql-deployment-moved.yml"):
            say("--- %s" % (name,))
            with open(files[name]) as f:
                say(f.read().rstrip())
        say()
        say("== 3. Deploy MySQL to node 1 (%s)" % (n1,))
        show([tool("flocker-deploy"), files["mysql-deployment.yml"],
              files["mysql-application.yml"]], env=env)
        say()
        say("== 4. Write rows through node 1's address")
        sql = ("CREATE DATABASE IF NOT EXISTS example; "
               "CREATE TABLE IF NOT EXISTS example.rows (id INT PRIMARY KEY, "
               "note VARCHAR(64)); REPLACE INTO example.rows VALUES "
               "(1, 'written before the move'), (2, 'still here after it');")
        say("$ mysql -h %s -uroot -p%s -e \"%s\"" % (n1, PASSWORD, sql))
        result = mysql(n1, sql)
        if result.returncode != 0:
            raise SystemExit("demo: MySQL on %s did not answer: %s" % (n1, result.stderr))
        say()
        say("== 5. Move it to node 2 (%s): deploy the moved file" % (n2,))
        prober = Prober([n1, n2])
        prober.start()
        time.sleep(1.0)
        started = time.monotonic()
        show([tool("flocker-deploy"), files["mysql-deployment-moved.yml"],
              files["mysql-application.yml"]], env=env)
        # Until it answers again through both addresses.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not [
                t for t in prober.successes if t > time.monotonic() - 0.5]:
            time.sleep(0.1)
        time.sleep(1.0)
        ended = time.monotonic()
        prober.stop_event.set()
        prober.join()
        say()
        say("== 6. Read the rows back through node 1's and node 2's addresses")
        for address in (n1, n2):
            say("$ mysql -h %s -uroot -p%s -e 'SELECT * FROM example.rows'"
                % (address, PASSWORD))
            result = mysql(address, "SELECT * FROM example.rows")
            say((result.stdout + result.stderr).rstrip())
            if "still here after it" not in result.stdout:
                raise SystemExit("demo: the rows are missing through %s" % (address,))
        say()
        say("== 7. What runs where")
        show([tool("flocker-lab"), "exec", "n1", "--", "docker", "ps"])
        show([tool("flocker-lab"), "exec", "n2", "--", "docker", "ps"])
        nat = subprocess.run([tool("flocker-lab"), "exec", "n1", "--", "iptables",
                              "-t", "nat", "-S"], text=True, capture_output=True)
        say("$ flocker-lab exec n1 -- iptables -t nat -S | grep FLOCKER")
        say("\n".join(l for l in nat.stdout.splitlines() if "FLOCKER" in l))
        say()
        say("== 8. MySQL was unreachable for %.2f s during the move "
            "(no answer through either address; %d connection attempts refused)"
            % (prober.longest_gap(started, ended), prober.refused))
        return 0
    except LabError as e:
        raise SystemExit("demo: %s" % (e,))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if args.keep:
            say()
            say("The lab keeps running: eval \"$(flocker-lab env)\" to use "
                "flocker-deploy on it; flocker-lab down to remove it.")
        else:
            say()
            say("== Taking the lab down (make demo KEEP=1 keeps it)")
            subprocess.run([tool("flocker-lab"), "down"])


if __name__ == "__main__":
    sys.exit(main())
