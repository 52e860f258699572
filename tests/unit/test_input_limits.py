"""
Input limits on the operator's side and in the checks the node shares with
it: YAML aliases charged by the bytes they expand to, the apply request's
size checked before it is sent, "did you mean" hints that cannot eat the
node's reactor, node text escaped before it reaches the terminal, event
lines bounded, and the character sets of mountpoints and image tags.
"""

import difflib
import io
import json
import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from flocker_async import _yaml, deploy as deploy_lib, validation, wire
from flocker_async.cli import deploy as cli
from flocker_async.config import (
    ConfigurationError,
    configuration_from_documents,
    configuration_from_objects,
    load_configuration,
)
from flocker_async.model import (
    Application,
    ClusterState,
    Deployment,
    DockerImage,
    Node,
)
from flocker_async.ssh import generate_key
from flocker_async.wire import decode_apply

from .test_deploy_lease import N1, N2, ScriptedClient, ScriptedNode


def laughs(string_bytes, keys, apps):
    """
    The alias fan-out ("billion laughs") application file: one long string
    anchored once, a mapping of ``keys`` aliases of it anchored as the first
    application's environment, and ``apps`` applications sharing that
    environment.  Expands to ``string_bytes * keys * apps`` bytes.
    """
    lines = ["version: 1", "applications:", "  a0:", "    image: busybox",
             "    environment: &e", "      V0: &s %s" % ("x" * string_bytes,)]
    lines += ["      V%d: *s" % (i,) for i in range(1, keys)]
    lines += ["  a%d: {image: busybox, environment: *e}" % (i,) for i in range(1, apps)]
    application = "\n".join(lines) + "\n"
    deployment = "version: 1\nnodes:\n  10.0.0.1: [%s]\n" % (
        ", ".join("a%d" % (i,) for i in range(apps)),)
    return deployment.encode("ascii"), application.encode("ascii")


def write(test, data: bytes) -> str:
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return path


# --- 6. YAML aliases and the apply request's size ------------------------------------

class AliasBudgetTests(SynchronousTestCase):
    def test_alias_fan_out_refused_naming_file_and_line(self):
        """
        The issue's 117 kB file that became a 100 MB apply request, scaled
        down: a 41 kB file whose aliases expand to 4.8 MB, more than a node
        accepts in one request.  It is refused while the file is read,
        naming the file, the line of the alias and the anchor.
        """
        dep, app = laughs(40_000, 10, 12)
        self.assertLess(len(app), 42_000)
        dep_path, app_path = write(self, dep), write(self, app)
        error = self.assertRaises(ConfigurationError, load_configuration,
                                  dep_path, app_path)
        [problem] = error.problems
        self.assertEqual(problem.file, app_path)
        # The first application that takes the expansion past the budget:
        # each copy of the environment is 400 kB, so the 11th (a10, line 25).
        self.assertEqual(problem.path, "line 25, column 38")
        self.assertIn("alias *e", problem.message)
        self.assertIn("4194304 bytes", problem.message)

    def test_nested_aliases_name_the_outermost(self):
        """An alias inside an aliased value: the line named is the one the
        user wrote last, where the copy that overflowed was asked for."""
        big = "x" * 700_000
        text = ("version: 1\napplications:\n"
                "  a: {image: busybox, environment: &e {A: &s %s, B: *s}}\n"
                "  b: {image: busybox, environment: *e}\n"
                "  c: {image: busybox, environment: *e}\n" % (big,))
        error = self.assertRaises(
            ConfigurationError, configuration_from_documents,
            b"version: 1\nnodes: {10.0.0.1: [a, b, c]}\n", text.encode(),
            "dep.yml", "app.yml")
        [problem] = error.problems
        self.assertEqual((problem.file, problem.path),
                         ("app.yml", "line 5, column 36"))

    def test_small_aliases_still_work(self):
        """Sharing an environment between applications is what aliases are
        for, and stays allowed."""
        dep, app = laughs(1000, 10, 10)
        deployment = configuration_from_documents(dep, app)
        environments = {app.name: app.environment for _, app in deployment.applications()}
        self.assertEqual(len(environments), 10)
        self.assertEqual(len(set(environments.values())), 1)
        self.assertEqual(len(dict(environments["a9"])), 10)

    def test_budget_is_what_a_node_accepts(self):
        self.assertEqual(_yaml.MAX_EXPANDED_BYTES, wire.MAX_REQUEST_BYTES)


def _big_application(name="big", size=5000):
    return Application(name=name, image=DockerImage("busybox"),
                       environment={"PAD": "x" * size})


class RequestSizeTests(SynchronousTestCase):
    """The encoded apply request is checked against the node's limit
    before anything is sent."""

    def setUp(self):
        self.patch(deploy_lib, "MAX_REQUEST_BYTES", 4000)
        self.nodes = {N1: ScriptedNode(N1), N2: ScriptedNode(N2)}
        self.client = ScriptedClient(self.nodes)

    def infos(self):
        deployment = Deployment(nodes=[Node(N1, []), Node(N2, [])])
        gathered = deploy_lib.gather(Clock(), self.client, deployment, 4522)
        return self.successResultOf(Deferred.fromCoroutine(gathered))

    def test_oversized_request_sent_to_no_node(self):
        deployment = Deployment(nodes=[
            Node(N1, [_big_application(), _big_application("small", 10)]),
            Node(N2, [])])
        applying = Deferred.fromCoroutine(deploy_lib.apply_all(
            self.client, deployment, self.infos(), 4522, lambda node, event: None))
        error = self.failureResultOf(applying, deploy_lib.RequestTooLarge).value
        self.assertEqual([len(n.applies) for n in self.nodes.values()], [0, 0])
        self.assertGreater(error.size, 4000)
        self.assertEqual(error.limit, 4000)
        self.assertEqual(error.part, "applications")
        self.assertEqual(error.largest[0], "big")
        self.assertGreater(error.largest[1], 5000)

    def test_request_within_the_limit_is_sent(self):
        deployment = Deployment(nodes=[Node(N1, [_big_application(size=10)]),
                                       Node(N2, [])])
        applying = Deferred.fromCoroutine(deploy_lib.apply_all(
            self.client, deployment, self.infos(), 4522, lambda node, event: None))
        self.assertEqual([len(n.applies) for n in self.nodes.values()], [1, 1])
        for node in self.nodes.values():
            node.applies[0].callback(None)
        self.successResultOf(applying)

    def test_deployment_checked_before_any_node_is_contacted(self):
        deployment = Deployment(nodes=[Node(N1, [_big_application()])])
        error = self.assertRaises(deploy_lib.RequestTooLarge,
                                  deploy_lib.check_deployment_size, deployment)
        self.assertEqual(error.part, "applications")
        deploy_lib.check_deployment_size(
            Deployment(nodes=[Node(N1, [_big_application(size=10)])]))


class RequestSizeCommandTests(SynchronousTestCase):
    def setUp(self):
        self.patch(deploy_lib, "MAX_REQUEST_BYTES", 4000)
        self.dep = write(self, b"version: 1\nnodes:\n  10.0.0.1: [big]\n")
        self.app = write(self, ("version: 1\napplications:\n  big:\n    image: busybox\n"
                                "    environment: {PAD: %s}\n" % ("x" * 5000,)).encode())

    def run_cli(self, argv):
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(argv, out, err)
        return status, out.getvalue(), err.getvalue()

    def test_deploy_refused_naming_the_application_file(self):
        status, out, err = self.run_cli(["-i", "/nonexistent/key", self.dep, self.app])
        self.assertEqual(status, cli.EXIT_CONFIGURATION)
        self.assertIn("%s: the apply request would be" % (self.app,), err)
        self.assertIn("more than the 4000 bytes a node accepts", err)
        self.assertIn("application big", err)
        self.assertIn("nothing was deployed", err)
        self.assertNotIn("identity", err)  # refused before any set-up or node

    def test_validate_reports_it(self):
        status, out, err = self.run_cli(["--validate", self.dep, self.app])
        self.assertEqual((status, out), (cli.EXIT_CONFIGURATION, ""))
        self.assertIn("%s: the apply request would be" % (self.app,), err)


# --- 7. "did you mean" hints ------------------------------------------------------

class ComparisonBudgetExceeded(Exception):
    pass


def count_comparisons(test, limit):
    """Count the string comparisons difflib makes (one ``set_seq1`` per
    candidate); more than ``limit`` fails at once, so a quadratic hint
    cannot make the test slow."""
    made = [0]

    class CountingMatcher(difflib.SequenceMatcher):
        def set_seq1(self, a):
            if a != "":  # the constructor's own empty sequence is no comparison
                made[0] += 1
            if made[0] > limit:
                raise ComparisonBudgetExceeded(made[0])
            super().set_seq1(a)
    test.patch(difflib, "SequenceMatcher", CountingMatcher)
    return made


def apply_request(names, references):
    apps = {name: {"image": "busybox"} for name in names}
    return json.dumps({
        "version": 1, "node": "10.0.0.1", "deploy_id": "d1", "cluster": [],
        "peers": [], "applications": {"version": 1, "applications": apps},
        "deployment": {"version": 1, "nodes": {"10.0.0.1": references}},
    }).encode("utf-8")


class HintTests(SynchronousTestCase):
    def test_close_match_skipped_past_the_limit(self):
        known = ["mysql"] + ["other%04d" % (i,) for i in range(
            validation.MAX_HINT_CANDIDATES - 1)]
        self.assertEqual(validation.close_match("mysq", known), "mysql")
        made = count_comparisons(self, 0)
        self.assertIsNone(validation.close_match("mysq", known + ["one-more"]))
        self.assertEqual(made[0], 0)

    def test_2000_bad_references_decoded_with_bounded_comparisons(self):
        """
        2,000 applications and 2,000 references to undefined ones: before,
        every reference was compared with every name (4,000,000
        comparisons, 14-24 s of the node's reactor); now no hint is
        computed past 200 candidates, and each problem is still reported.
        """
        made = count_comparisons(self, 50_000)
        names = ["app%04d" % (i,) for i in range(2000)]
        data = apply_request(names, ["apq%04d" % (i,) for i in range(2000)])
        error = self.assertRaises(ConfigurationError, decode_apply, data)
        self.assertEqual(len(error.problems), 2000)
        self.assertFalse([p for p in error.problems if "did you mean" in p.message])
        self.assertEqual(made[0], 0)

    def test_hints_below_the_limit(self):
        names = ["app%04d" % (i,) for i in range(50)]
        data = apply_request(names, ["apq%04d" % (i,) for i in range(50)])
        error = self.assertRaises(ConfigurationError, decode_apply, data)
        self.assertEqual(len(error.problems), 50)
        self.assertIn('(did you mean "app0007"?)', error.problems[7].message)

    def test_hints_of_one_file_share_a_budget(self):
        """Many unknown keys, each compared with a dozen known ones: the
        comparisons of one file stop at its budget, the problems do not."""
        budget = validation.MAX_HINT_COMPARISONS
        made = count_comparisons(self, budget + 1000)
        app = {"image": "busybox", "imgae": 1}
        app.update({"k%05d" % (i,): 1 for i in range(4999)})
        error = self.assertRaises(
            ConfigurationError, configuration_from_objects,
            {"version": 1, "nodes": {"10.0.0.1": ["db"]}},
            {"version": 1, "applications": {"db": app}})
        self.assertEqual(len(error.problems), 5000)
        self.assertLessEqual(made[0], budget + 1000)
        self.assertIn("did you mean 'image'", error.problems[0].message)


# --- 12. node text on the terminal, event lines, character sets --------------------

class EscapeTests(SynchronousTestCase):
    def test_control_characters_shown_escaped(self):
        self.assertEqual(
            cli.printable("a\x1b[2Jb\rc\x07\x00\x7f\x9b\td\ne"),
            "a\\x1b[2Jb\\rc\\x07\\x00\\x7f\\x9b\\td\ne")

    def test_bidirectional_overrides_shown_escaped(self):
        self.assertEqual(cli.printable("x\u202ey\u2066z"), "x\\u202ey\\u2066z")

    def test_newlines_kept_or_escaped(self):
        self.assertEqual(cli.printable("a\nb"), "a\nb")
        self.assertEqual(cli.printable("a\nb", newlines=False), "a\\nb")

    def test_printable_text_unchanged(self):
        text = "volume db: 1.5 GiB, 100 MB/s \u00e9\u4e2d"
        self.assertEqual(cli.printable(text), text)

    def test_plain_progress_escapes_node_text(self):
        out = io.StringIO()
        progress = cli.Progress(out, ["n1"], live=False)
        progress.event("n1", {"action": "problem", "application": "db",
                              "message": "zfs: \x1b]0;owned\x07\x1b[2J done"})
        progress.event("n1", {"result": "failed", "errors": ["bad\rline\nnext"]})
        self.assertNotIn("\x1b", out.getvalue())
        self.assertNotIn("\r", out.getvalue())
        self.assertEqual(out.getvalue().splitlines(), [
            "n1: db: zfs: \\x1b]0;owned\\x07\\x1b[2J done",
            "n1: failed: bad\\rline\\nnext"])

    def test_live_progress_keeps_one_line_per_node(self):
        out = io.StringIO()
        progress = cli.Progress(out, ["n1", "n2"], live=True)
        progress.event("n1", {"action": "waiting",
                              "message": "busy\n\x1b[10Adeploy 7\x1b[1;1H"})
        text = out.getvalue()
        # Only our own sequences: erase a line, cursor up.
        self.assertEqual(text.count("\x1b"), text.count("\x1b[2K") + text.count("\x1b[2A"))
        self.assertEqual(text.count("\n"), 2)
        self.assertIn("n1: waiting: busy\\n\\x1b[10Adeploy 7\\x1b[1;1H\n", text)

    def test_node_failure_escaped(self):
        """What a node says when it fails (its stderr, a peer's zfs error)
        is escaped before it is printed."""
        key = write(self, generate_key().toString("openssh"))
        known_hosts = write(self, b"")
        dep = write(self, b"version: 1\nnodes:\n  10.0.0.1: []\n")
        app = write(self, b"version: 1\napplications: {}\n")

        async def failing(*args, **kwargs):
            raise deploy_lib.DeployFailed([deploy_lib.NodeFailure(
                "10.0.0.1", "zfs recv: \x1b[31mcannot\x1b[0m\r\x1b[Kok")])
        self.patch(deploy_lib, "deploy", failing)
        options = cli.DeployOptions()
        options.parseOptions(["-i", key, "--known-hosts", known_hosts, dep, app])
        out, err = io.StringIO(), io.StringIO()
        self.successResultOf(cli.run_deploy(options, out, err, dry=False,
                                            reactor=Clock()))
        self.assertEqual(err.getvalue(), "flocker-deploy: node 10.0.0.1 failed: zfs "
                         "recv: \\x1b[31mcannot\\x1b[0m\\r\\x1b[Kok\n")


class EventLineTests(SynchronousTestCase):
    def lines(self, limit=None):
        events = []
        kwargs = {} if limit is None else {"limit": limit}
        return deploy_lib._Lines(events.append, **kwargs), events

    def test_long_line_buffered_up_to_the_limit(self):
        """A node that never ends its line holds at most 1 MiB here."""
        lines, events = self.lines()
        chunk = b"x" * 65536
        for _ in range(40):
            lines.write(chunk)
            self.assertLessEqual(len(lines.buffer), 1024 * 1024)
        self.assertEqual(events, [{"action": "line-cut", "limit": 1024 * 1024}])

    def test_long_line_dropped_with_a_marker_then_events_resume(self):
        lines, events = self.lines(limit=100)
        lines.write(b'{"action": "start", "application": "a"}\n' + b"y" * 60)
        lines.write(b"y" * 60)
        lines.write(b"y" * 60 + b'\n{"result": "ok"}\n')
        self.assertEqual(events, [{"action": "start", "application": "a"},
                                  {"action": "line-cut", "limit": 100},
                                  {"result": "ok"}])
        self.assertEqual(lines.result, {"result": "ok"})
        self.assertEqual(len(lines.buffer), 0)

    def test_line_at_the_limit_is_kept(self):
        lines, events = self.lines(limit=20)
        line = b'{"message": "%s"}' % (b"z" * 5,)
        self.assertEqual(len(line), 20)
        lines.write(line[:5])
        lines.write(line[5:] + b"\n")
        self.assertEqual(events, [{"message": "z" * 5}])

    def test_lines_split_across_writes(self):
        lines, events = self.lines(limit=100)
        for byte in b'{"a": 1}\n\n{"b": 2}\n':
            lines.write(bytes([byte]))
        self.assertEqual(events, [{"a": 1}, {"b": 2}])

    def test_marker_names_the_node_on_the_terminal(self):
        out = io.StringIO()
        progress = cli.Progress(out, ["n1"], live=False)
        progress.event("n1", {"action": "line-cut", "limit": 1024 * 1024})
        self.assertEqual(out.getvalue(), "n1: skipped a line of this node's output "
                         "longer than 1.0 MiB\n")


def _volume_app(mountpoint):
    return configuration_from_objects(
        {"version": 1, "nodes": {"10.0.0.1": ["db"]}},
        {"version": 1, "applications": {"db": {
            "image": "busybox", "volume": {"mountpoint": mountpoint}}}})


class MountpointTests(SynchronousTestCase):
    def test_control_characters_refused(self):
        for character in "\r\x1b\x7f\x85\x01\n\t":
            error = self.assertRaises(ConfigurationError, _volume_app,
                                      "/data%sx" % (character,))
            self.assertIn("control characters", error.message, repr(character))

    def test_carriage_return_refused_in_a_file(self):
        app = (b'version: 1\napplications:\n  db:\n    image: busybox\n'
               b'    volume: {mountpoint: "/data\\r\\e[2J"}\n')
        error = self.assertRaises(ConfigurationError, configuration_from_documents,
                                  b"version: 1\nnodes: {10.0.0.1: [db]}\n", app,
                                  "dep.yml", "app.yml")
        self.assertEqual(error.path, "applications.db.volume.mountpoint")
        self.assertIn("control characters", error.message)

    def test_ordinary_paths_accepted(self):
        [(_, app)] = list(_volume_app("/var/lib/my-sql_data/\u00e9").applications())
        self.assertEqual(app.volume.mountpoint, "/var/lib/my-sql_data/\u00e9")


def _image(image):
    return configuration_from_objects(
        {"version": 1, "nodes": {"10.0.0.1": ["db"]}},
        {"version": 1, "applications": {"db": {"image": image}}})


class ImageTagTests(SynchronousTestCase):
    def test_non_ascii_tags_refused(self):
        """Unicode letters and digits match ``\\w``; Docker refuses them."""
        for image in ("busybox:\u00e9t\u00e9", "busybox:\u0661\u0662",
                      "busybox:v1\u00b2", "busybox:\uff41"):
            error = self.assertRaises(ConfigurationError, _image, image)
            self.assertIn("invalid image name", error.message, image)

    def test_ascii_tags_accepted(self):
        [(_, app)] = list(_image("registry:5000/team/busybox:V1.2_3-rc").applications())
        self.assertEqual(app.image, DockerImage("registry:5000/team/busybox", "V1.2_3-rc"))

    def test_non_ascii_digits_are_not_sizes(self):
        self.assertIsNone(validation.parse_size("\u0661G"))
        self.assertIsNone(validation.parse_duration("\u0661m"))
        self.assertEqual(validation.parse_size("1G"), 1 << 30)
