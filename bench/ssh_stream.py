"""
Stream throughput of flocker_async.ssh over loopback, beside OpenSSH.

    .venv/bin/python bench/ssh_stream.py [--size-mib 512] [--no-openssh]

Our server runs in a child process (as the daemon would) with the flow
control settings under test; the client runs here.  For each setting it
measures client stdin -> server command that discards it ("upload", the
shape of a volume push) and server stdout -> client consumer ("download"),
with the peak RSS of both processes.  If sshd is available it also runs
OpenSSH -> sshd (the baseline every ratio is against), our client ->
sshd, and OpenSSH's client -> our server.  MB is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task, threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flocker_async import ssh  # noqa: E402

CHUNK = 256 * 1024
ZEROS = bytes(CHUNK)
SETTINGS = [
    # (label, window, max packet)
    ("conch defaults", 128 * 1024, 32 * 1024),
    ("4 MiB window, 256 KiB packets", 4 * 1024 * 1024, 256 * 1024),
    ("tuned (library default)", ssh.DEFAULT_WINDOW_SIZE, ssh.DEFAULT_MAX_PACKET),
]


# Producers and consumers used on both sides.

@implementer(IPushProducer)
class ZeroProducer:
    """Writes ``total`` zero bytes to a consumer whenever it is not paused."""

    def __init__(self, total):
        self.total = total
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.consumer = None
        self.done = Deferred()

    def startProducing(self, consumer):
        self.consumer = consumer
        self._produce()
        return self.done

    def _produce(self):
        while not self.paused and self.sent < self.total:
            size = min(CHUNK, self.total - self.sent)
            self.sent += size
            self.consumer.write(ZEROS if size == CHUNK else bytes(size))
        if self.sent >= self.total and not self.done.called:
            self.done.callback(None)

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self._produce()

    def stopProducing(self):
        self.paused = True


class CountingConsumer:
    def __init__(self):
        self.count = 0
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.count += len(data)


# The server child.

def serve(args):
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    host_key = ssh.load_or_create_key(os.path.join(args.serve, "host_key"))
    client_key = ssh.load_or_create_key(os.path.join(args.serve, "client_key"))

    async def discard(role, argv, session):
        consumer = CountingConsumer()
        await session.stream_stdin(consumer)
        session.write_stderr("%d %d\n" % (consumer.count, session.stdin_max_buffered))
        return 0

    async def zeros(role, argv, session):
        producer = ZeroProducer(int(argv[0]))
        session.registerProducer(producer, True)
        await producer.startProducing(session)
        session.unregisterProducer()
        return 0

    def wrap(function):
        return lambda role, argv, session: Deferred.fromCoroutine(
            function(role, argv, session))

    factory = ssh.make_ssh_factory(
        reactor, host_key, ssh.KeyAuthorizer({ssh.OPERATOR: [client_key]}),
        {"discard": ssh.Command({ssh.OPERATOR}, wrap(discard), large_input=True),
         "zeros": ssh.Command({ssh.OPERATOR}, wrap(zeros))},
        window_size=args.window, max_packet=args.max_packet)

    def listening(port):
        with open(os.path.join(args.serve, "port.tmp"), "w") as f:
            f.write(str(port.getHost().port))
        os.rename(os.path.join(args.serve, "port.tmp"), os.path.join(args.serve, "port"))
    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(
        listening)
    reactor.run()


# Measuring.

def peak_rss_mib(pid="self"):
    with open("/proc/%s/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def rss_mib(pid="self"):
    with open("/proc/%s/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


_BASELINE = {}


def reset_peak_rss(pid="self"):
    """Start a measurement: remember the RSS now, reset the peak to it."""
    try:
        with open("/proc/%s/clear_refs" % (pid,), "w") as f:
            f.write("5")
    except OSError:
        pass
    _BASELINE[str(pid)] = rss_mib(pid)


def peak_growth(pid="self"):
    """(peak RSS, growth over the RSS at reset_peak_rss) in MiB."""
    peak = peak_rss_mib(pid)
    return peak, peak - _BASELINE.get(str(pid), peak)


class Row:
    def __init__(self, label, direction, seconds, size, client_rss=None,
                 server_rss=None, note=""):
        self.label = label
        self.direction = direction
        self.seconds = seconds
        self.size = size
        self.client_rss = client_rss
        self.server_rss = server_rss
        self.note = note

    @property
    def mbps(self):
        return self.size / self.seconds / 1e6 if self.seconds else 0.0


def wait_for_file(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start: no %s" % (path,))
        time.sleep(0.02)
    with open(path) as f:
        return f.read().strip()


async def conch_to_conch(reactor, workdir, label, window, max_packet, size):
    serverdir = os.path.join(workdir, "server-%d-%d" % (window, max_packet))
    os.makedirs(serverdir)
    shutil.copy(os.path.join(workdir, "host_key"), serverdir)
    shutil.copy(os.path.join(workdir, "client_key"), serverdir)
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", serverdir,
         "--window", str(window), "--max-packet", str(max_packet)])
    try:
        port = int(await threads.deferToThread(
            wait_for_file, os.path.join(serverdir, "port")))
        client = ssh.SSHClient(
            reactor, ssh.load_or_create_key(os.path.join(workdir, "client_key")),
            os.path.join(workdir, "known_hosts"), window_size=window,
            max_packet=max_packet, idle_timeout=60)
        rows = []
        connection = await client.connect("127.0.0.1", port)

        reset_peak_rss(server.pid)
        reset_peak_rss()
        producer = ZeroProducer(size)
        started = time.monotonic()
        result = await connection.run(["discard"], stdin_producer=producer)
        seconds = time.monotonic() - started
        received, server_buffered = map(int, result.stderr.split())
        assert received == size, (received, size)
        rows.append(Row(label, "upload", seconds, size, peak_growth(),
                        peak_growth(server.pid),
                        "sender paused %d times; server held <= %d KiB"
                        % (producer.pauses, server_buffered // 1024)))

        reset_peak_rss(server.pid)
        reset_peak_rss()
        consumer = CountingConsumer()
        started = time.monotonic()
        await connection.run(["zeros", str(size)], stdout_consumer=consumer)
        seconds = time.monotonic() - started
        assert consumer.count == size, (consumer.count, size)
        rows.append(Row(label, "download", seconds, size, peak_growth(),
                        peak_growth(server.pid)))
        await connection.close()
        return rows, port
    finally:
        server.terminate()
        server.wait()


def timed_pipeline(producer_argv, consumer_argv):
    """``producer | consumer`` without a shell; seconds taken."""
    started = time.monotonic()
    producer = subprocess.Popen(producer_argv, stdout=subprocess.PIPE)
    consumer = subprocess.Popen(consumer_argv, stdin=producer.stdout,
                                stdout=subprocess.DEVNULL)
    producer.stdout.close()
    status = consumer.wait()
    producer.wait()
    if status != 0:
        raise RuntimeError("%s exited %d" % (consumer_argv, status))
    return time.monotonic() - started


def timed_run(argv):
    started = time.monotonic()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - started


def ssh_argv(workdir, port, command):
    return ["ssh", "-F", "/dev/null", "-p", str(port),
            "-i", os.path.join(workdir, "client_key"),
            "-o", "UserKnownHostsFile=" + os.path.join(workdir, "known_hosts"),
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "root@127.0.0.1"] + command


def start_sshd(workdir):
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or os.geteuid() != 0:
        return None, None
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    authorized = os.path.join(workdir, "authorized_keys")
    shutil.copy(os.path.join(workdir, "client_key.pub"), authorized)
    os.chmod(authorized, 0o600)
    config = os.path.join(workdir, "sshd_config")
    with open(config, "w") as f:
        f.write("\n".join([
            "ListenAddress 127.0.0.1", "Port %d" % port,
            "HostKey " + os.path.join(workdir, "host_key"),
            "AuthorizedKeysFile " + authorized, "StrictModes no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "PidFile none", "PermitRootLogin prohibit-password", ""]))
    os.makedirs("/run/sshd", exist_ok=True)
    process = subprocess.Popen([sshd, "-D", "-e", "-f", config],
                               stderr=subprocess.DEVNULL)
    import socket as _socket
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            _socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.terminate()
    return None, None


async def against_sshd(reactor, workdir, size):
    process, port = await threads.deferToThread(start_sshd, workdir)
    if process is None:
        return []
    try:
        host_key = ssh.load_or_create_key(os.path.join(workdir, "host_key"))
        ssh.add_known_host(os.path.join(workdir, "known_hosts"), "127.0.0.1", port,
                           host_key)
        head = ["head", "-c", str(size), "/dev/zero"]
        rows = []
        seconds = await threads.deferToThread(
            timed_pipeline, head, ssh_argv(workdir, port, ["cat > /dev/null"]))
        rows.append(Row("OpenSSH -> sshd", "upload", seconds, size))
        seconds = await threads.deferToThread(
            timed_run, ssh_argv(workdir, port, ["head -c %d /dev/zero" % size]))
        rows.append(Row("OpenSSH -> sshd", "download", seconds, size))

        client = ssh.SSHClient(
            reactor, ssh.load_or_create_key(os.path.join(workdir, "client_key")),
            os.path.join(workdir, "known_hosts"), idle_timeout=60)
        reset_peak_rss()
        producer = ZeroProducer(size)
        started = time.monotonic()
        await client.run("127.0.0.1", port, ["sh", "-c", "cat > /dev/null"],
                         stdin_producer=producer)
        rows.append(Row("our client -> sshd", "upload", time.monotonic() - started,
                        size, peak_growth()))
        reset_peak_rss()
        consumer = CountingConsumer()
        started = time.monotonic()
        await client.run("127.0.0.1", port, ["head", "-c", str(size), "/dev/zero"],
                         stdout_consumer=consumer)
        assert consumer.count == size
        rows.append(Row("our client -> sshd", "download", time.monotonic() - started,
                        size, peak_growth()))
        return rows
    finally:
        process.terminate()
        process.wait()


async def openssh_to_conch(workdir, port, size):
    head = ["head", "-c", str(size), "/dev/zero"]
    seconds = await threads.deferToThread(
        timed_pipeline, head, ssh_argv(workdir, port, ["discard"]))
    rows = [Row("OpenSSH client -> our server", "upload", seconds, size)]
    seconds = await threads.deferToThread(
        timed_run, ssh_argv(workdir, port, ["zeros", str(size)]))
    rows.append(Row("OpenSSH client -> our server", "download", seconds, size))
    return rows


async def main(reactor, args):
    size = args.size_mib * 1024 * 1024
    workdir = tempfile.mkdtemp(prefix="flocker-ssh-bench-")
    try:
        host_key = ssh.load_or_create_key(os.path.join(workdir, "host_key"))
        ssh.load_or_create_key(os.path.join(workdir, "client_key"))
        rows = []
        if not args.no_openssh:
            rows += await against_sshd(reactor, workdir, size)
        settings = SETTINGS
        if args.window:
            settings = [("--window %d --max-packet %d" % (args.window, args.max_packet),
                         args.window, args.max_packet)]
        for label, window, max_packet in settings:
            # The child picks its port; trust its (shared) host key for any port.
            with open(os.path.join(workdir, "known_hosts"), "a") as f:
                f.write(ssh.known_hosts_line("127.0.0.1", 22, host_key) + "\n")
            conch_rows, port = await conch_to_conch(
                reactor, workdir, "ours -> ours, " + label, window, max_packet, size)
            rows += conch_rows
        if not args.no_openssh:
            # The last server setting again, driven by OpenSSH's client.
            serverdir = os.path.join(workdir, "openssh-client")
            os.makedirs(serverdir)
            for name in ("host_key", "client_key"):
                shutil.copy(os.path.join(workdir, name), serverdir)
            server = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--serve", serverdir,
                 "--window", str(settings[-1][1]), "--max-packet", str(settings[-1][2])])
            try:
                port = int(await threads.deferToThread(
                    wait_for_file, os.path.join(serverdir, "port")))
                ssh.add_known_host(os.path.join(workdir, "known_hosts"), "127.0.0.1",
                                   port, host_key)
                reset_peak_rss(server.pid)
                openssh_rows = await openssh_to_conch(workdir, port, size)
                openssh_rows[-1].server_rss = peak_growth(server.pid)
                rows += openssh_rows
            finally:
                server.terminate()
                server.wait()
        report(rows, size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(rows, size):
    baseline = {r.direction: r.mbps for r in rows if r.label == "OpenSSH -> sshd"}
    print("\n%d MiB over loopback, %d cores" % (size // (1024 * 1024), os.cpu_count()))
    print("%-48s %-9s %7s %6s %13s %13s  %s" % (
        "path", "direction", "MB/s", "ratio", "client MiB", "server MiB", "notes"))
    for r in rows:
        ratio = ("%.2f" % (r.mbps / baseline[r.direction])
                 if r.direction in baseline else "-")
        print("%-48s %-9s %7.1f %6s %13s %13s  %s" % (
            r.label, r.direction, r.mbps, ratio, show_rss(r.client_rss),
            show_rss(r.server_rss), r.note))
    print("ratio: against OpenSSH client -> OpenSSH sshd in the same direction; "
          "MiB: peak RSS of the process during the run (VmHWM) and its growth "
          "over the RSS at the start of the run")


def show_rss(value):
    if value is None:
        return "-"
    peak, growth = value
    return "%.0f (+%.1f)" % (peak, growth)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--no-openssh", action="store_true")
    parser.add_argument("--window", type=int, default=0,
                        help="measure only this window size (bytes)")
    parser.add_argument("--max-packet", type=int, default=ssh.DEFAULT_MAX_PACKET)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.serve:
        serve(arguments)
    else:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
