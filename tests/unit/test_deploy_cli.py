"""
flocker-deploy's command line: options, environment defaults, progress
rendering and exit statuses that need no cluster.
"""

import io
import os

from twisted.trial.unittest import SynchronousTestCase

from flocker_async.cli import deploy
from flocker_async.ssh import generate_key

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "config", "examples")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class ProgressTests(SynchronousTestCase):
    def test_plain_lines_when_not_a_terminal(self):
        out = io.StringIO()
        clock = FakeClock()
        progress = deploy.Progress(out, ["n1", "n2"], live=False, clock=clock)
        progress.event("n1", {"action": "push", "application": "db", "to": "n2",
                              "incremental": False})
        progress.event("n1", {"action": "transfer", "application": "db", "to": "n2",
                              "phase": "push", "bytes": 0})
        clock.now = 2.0
        progress.event("n1", {"action": "transfer", "application": "db", "to": "n2",
                              "phase": "push", "bytes": 200 * 1000 * 1000})
        progress.event("n2", {"result": "ok", "node": "n2"})
        self.assertEqual(out.getvalue().splitlines(), [
            "n1: pushing volume db to n2 (full)",
            "n1: sending volume db to n2: 0 B",
            "n1: sending volume db to n2: 190.7 MiB, 100.0 MB/s",
            "n2: converged"])

    def test_live_lines_redraw_one_line_per_node(self):
        out = io.StringIO()
        progress = deploy.Progress(out, ["n1", "n2"], live=True, clock=FakeClock())
        progress.event("n1", {"action": "start", "application": "web"})
        progress.event("n2", {"action": "stop", "application": "db"})
        text = out.getvalue()
        # The second drawing moves the cursor up over the two node lines.
        self.assertIn("\x1b[2A", text)
        self.assertEqual(text.count("\x1b[2K"), 4)
        last = text.rsplit("\x1b[2A", 1)[1]
        self.assertIn("n1: starting web", last)
        self.assertIn("n2: stopping db", last)

    def test_failure_result_names_errors(self):
        self.assertEqual(
            deploy.describe({"result": "failed", "errors": ["disk full", "x"]}),
            "failed: disk full; x")


class OptionTests(SynchronousTestCase):
    def parse(self, argv, environ=None):
        old = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(old)))
        for key in ("FLOCKER_IDENTITY", "FLOCKER_KNOWN_HOSTS", "FLOCKER_PORT"):
            os.environ.pop(key, None)
        os.environ.update(environ or {})
        options = deploy.DeployOptions()
        options.parseOptions(argv)
        return options

    def test_defaults_from_environment(self):
        options = self.parse(["d.yml", "a.yml"], {
            "FLOCKER_IDENTITY": "/k", "FLOCKER_KNOWN_HOSTS": "/kh", "FLOCKER_PORT": "2222"})
        self.assertEqual((options["identity"], options["known-hosts"], options["port"]),
                         ("/k", "/kh", 2222))

    def test_defaults_without_environment(self):
        options = self.parse(["d.yml", "a.yml"])
        self.assertEqual(options["identity"], os.path.expanduser("~/.ssh/id_ed25519"))
        self.assertEqual(options["known-hosts"], os.path.expanduser("~/.ssh/known_hosts"))
        self.assertEqual(options["port"], 4522)

    def test_options_beat_environment(self):
        options = self.parse(["-i", "/mine", "--port", "4600", "d.yml", "a.yml"],
                             {"FLOCKER_IDENTITY": "/k", "FLOCKER_PORT": "2222"})
        self.assertEqual((options["identity"], options["port"]), ("/mine", 4600))

    def test_bad_port(self):
        from twisted.python.usage import UsageError
        self.assertRaises(UsageError, self.parse, ["--port", "0", "d.yml", "a.yml"])
        self.assertRaises(UsageError, self.parse, ["d.yml", "a.yml"],
                          {"FLOCKER_PORT": "ssh"})


class SetupErrorTests(SynchronousTestCase):
    def run_cli(self, argv):
        out, err = io.StringIO(), io.StringIO()
        status = deploy.main(argv, out, err)
        return status, out.getvalue(), err.getvalue()

    def files(self):
        return [os.path.join(EXAMPLES, "mysql-deployment.yml"),
                os.path.join(EXAMPLES, "mysql-application.yml")]

    def test_missing_identity(self):
        status, out, err = self.run_cli(["-i", "/nonexistent/key"] + self.files())
        self.assertEqual(status, 1)
        self.assertIn("no identity key at /nonexistent/key", err)

    def test_missing_known_hosts(self):
        key = self.mktemp()
        with open(key, "wb") as f:
            f.write(generate_key().toString("openssh"))
        status, out, err = self.run_cli(
            ["-i", key, "--known-hosts", "/nonexistent/kh"] + self.files())
        self.assertEqual(status, 1)
        self.assertIn("no known_hosts file at /nonexistent/kh", err)

    def test_invalid_configuration_contacts_no_node(self):
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write("version: 1\nnodes: [oops]\n")
        status, out, err = self.run_cli(
            ["-i", "/nonexistent/key", bad, self.files()[1]])
        self.assertEqual(status, 1)
        self.assertIn("nodes: expected a mapping", err)
        self.assertNotIn("identity", err)  # validation came first

    def test_external_port_of_the_daemon_refused(self):
        app = self.mktemp()
        with open(app, "w") as f:
            f.write("version: 1\napplications:\n  ssh-app:\n    image: busybox\n"
                    "    ports: [{internal: 22, external: 4522}]\n")
        dep = self.mktemp()
        with open(dep, "w") as f:
            f.write("version: 1\nnodes:\n  10.0.0.1: [ssh-app]\n")
        status, out, err = self.run_cli(["-i", "/nonexistent/key", dep, app])
        self.assertEqual(status, 1)
        self.assertIn("publish external port 4522, the port flocker-node listens on", err)
