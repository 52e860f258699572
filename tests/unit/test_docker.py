"""
Unit tests for flocker_async.docker: the contract against the in-memory
fake, DockerClient's requests against a scripted engine, the configuration
digest, and the offline busybox image builder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import uuid
from urllib.parse import unquote

from attrs import evolve
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

import flocker_async.docker
from flocker_async.docker import (
    APPLICATION_LABEL, DIGEST_LABEL, DockerClient, DockerError,
    MemoryDockerClient, configuration_digest, container_name)
from flocker_async.docker import _client, _interfaces, _memory
from flocker_async.lab import images
from flocker_async.lab.images import BUSYBOX_IMAGE
from flocker_async.model import (
    Application, AttachedVolume, DockerImage, Link, Port, RestartPolicy)
from tests.testtools.docker import make_idockerclient_tests


class MemoryDockerClientContractTests(make_idockerclient_tests(
        lambda test: MemoryDockerClient(images=[BUSYBOX_IMAGE]))):
    """The in-memory fake honours the IDockerClient contract."""


class MemoryDockerClientTests(SynchronousTestCase):
    """Behaviour only the fake has."""

    def test_pull_from_registry(self):
        """An image in the fake's registry can be pulled, then exists."""
        image = DockerImage("example/app", "1.0")
        client = MemoryDockerClient(registry=[image])
        self.successResultOf(client.pull_image(image))
        self.assertTrue(self.successResultOf(client.image_exists(image)))

    def test_simulate_exit(self):
        """A simulated crash leaves the unit listed and not running."""
        client = MemoryDockerClient(images=[BUSYBOX_IMAGE])
        app = Application(name="web", image=BUSYBOX_IMAGE)
        self.successResultOf(client.add(app))
        client.simulate_exit("web")
        [unit] = self.successResultOf(client.list())
        self.assertEqual((unit.name, unit.running), ("web", False))


class PublicNamesTests(SynchronousTestCase):
    """The package re-exports its private modules' names."""

    def test_public_names(self):
        self.assertIs(flocker_async.docker.DockerClient, _client.DockerClient)
        self.assertIs(flocker_async.docker.MemoryDockerClient,
                      _memory.MemoryDockerClient)
        self.assertIs(flocker_async.docker.IDockerClient,
                      _interfaces.IDockerClient)
        self.assertIs(flocker_async.docker.DockerError, _interfaces.DockerError)
        self.assertIs(flocker_async.docker.Unit, _interfaces.Unit)

    def test_all_exported(self):
        for name in flocker_async.docker.__all__:
            self.assertTrue(hasattr(flocker_async.docker, name), name)


WEB = Application(
    name="web",
    image=DockerImage("nginx", "1.25"),
    environment={"B": "2", "A": "1"},
    ports=[Port(80, 8080), Port(443, 8443)],
    links=[Link(local_port=3306, remote_port=3306, alias="db")],
    volume=AttachedVolume(mountpoint="/data", maximum_size=1 << 30),
    mem_limit=128 * 1024 * 1024,
    cpu_shares=256,
    restart_policy=RestartPolicy("on-failure", 5),
)


class ConfigurationDigestTests(SynchronousTestCase):

    def test_known_value(self):
        """
        The digest of a fixed application never changes: a change here
        would restart every container after an upgrade.
        """
        self.assertEqual(
            configuration_digest(WEB, "/flocker/web"),
            "6658c00ea3eb35a7a05a629ec63044b87d4ffd6118ddf53225dccefce0513d6b")

    def test_order_independent(self):
        """Environment and ports given in another order digest the same."""
        same = Application(
            name="web", image=DockerImage("nginx", "1.25"),
            environment=[("B", "2"), ("A", "1")],
            ports=[Port(443, 8443), Port(80, 8080)],
            links=[Link(3306, 3306, "db")],
            volume=AttachedVolume(mountpoint="/data"),
            mem_limit=128 * 1024 * 1024, cpu_shares=256,
            restart_policy=RestartPolicy("on-failure", 5))
        self.assertEqual(configuration_digest(same, "/flocker/web"),
                         configuration_digest(WEB, "/flocker/web"))

    def test_maximum_size_ignored(self):
        """The volume's quota is not a container setting."""
        bigger = evolve(WEB, volume=AttachedVolume("/data", 2 << 30))
        self.assertEqual(configuration_digest(WEB, "/p"),
                         configuration_digest(bigger, "/p"))

    def test_every_container_setting_counts(self):
        """Each setting that shapes the container changes the digest."""
        variants = [
            evolve(WEB, image=DockerImage("nginx", "1.26")),
            evolve(WEB, environment={"A": "1"}),
            evolve(WEB, ports=[Port(80, 8081)]),
            evolve(WEB, links=[]),
            evolve(WEB, volume=AttachedVolume("/other")),
            evolve(WEB, mem_limit=None),
            evolve(WEB, cpu_shares=1024),
            evolve(WEB, restart_policy=RestartPolicy("always")),
            evolve(WEB, name="web2"),
        ]
        digests = {configuration_digest(v, "/p") for v in variants}
        digests.add(configuration_digest(WEB, "/p"))
        digests.add(configuration_digest(WEB, "/q"))
        self.assertEqual(len(digests), len(variants) + 2)


class FakeEngine(Resource):
    """
    A scripted Docker engine: ``responses[(method, path)]`` is a list of
    ``(status, json body)`` handed out in order; every request is recorded.
    """

    isLeaf = True

    def __init__(self, api_version="1.41", min_version="1.12"):
        super().__init__()
        self.requests = []
        self.responses = {
            ("GET", "/version"): [(200, {"ApiVersion": api_version,
                                         "MinAPIVersion": min_version})],
        }

    def script(self, method, path, status, body):
        self.responses.setdefault((method, path), []).append((status, body))

    def render(self, request):
        method = request.method.decode()
        path = unquote(request.path.decode())
        body = request.content.read()
        self.requests.append({
            "method": method, "path": path,
            "args": {k.decode(): [v.decode() for v in vs]
                     for k, vs in request.args.items()},
            "body": body,
            "content_type": request.getHeader("content-type"),
        })
        queue = self.responses.get((method, path))
        if not queue:
            request.setResponseCode(404)
            return json.dumps({"message": "page not found"}).encode()
        status, reply = queue.pop(0) if len(queue) > 1 else queue[0]
        request.setResponseCode(status)
        if reply is None:
            return b""
        if isinstance(reply, bytes):
            return reply
        request.setHeader("content-type", "application/json")
        return json.dumps(reply).encode()

    def paths(self):
        return [(r["method"], r["path"]) for r in self.requests]


def _inspect(app_name="web", status="running", **host):
    return {
        "Id": "c0ffee",
        "Image": "sha256:1234",
        "State": {"Status": status},
        "Config": {
            "Image": "nginx:1.25",
            "Env": ["PATH=/usr/bin", "A=1"],
            "Labels": {APPLICATION_LABEL: app_name, DIGEST_LABEL: "d1"},
        },
        "HostConfig": dict({
            "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
            "Binds": ["/flocker/web:/data"],
            "Memory": 0, "CpuShares": 0,
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        }, **host),
    }


class DockerClientRequestTests(TestCase):
    """DockerClient's requests and its reading of the answers."""

    def client(self, engine):
        return DockerClient(reactor, socket_path="/nonexistent/docker.sock",
                            agent=RequestTraversalAgent(engine))

    @inlineCallbacks
    def test_negotiates_down_to_supported(self):
        """A newer engine is spoken to in the newest API we support."""
        engine = FakeEngine(api_version="1.47")
        version = yield self.client(engine).api_version()
        self.assertEqual(version, "1.41")

    @inlineCallbacks
    def test_negotiates_older_engine(self):
        """An older engine is spoken to in its own version."""
        engine = FakeEngine(api_version="1.30")
        engine.script("GET", "/v1.30/images/nginx:1.25/json", 200, {})
        client = self.client(engine)
        yield client.image_exists(DockerImage("nginx", "1.25"))
        self.assertEqual(engine.paths()[-1],
                         ("GET", "/v1.30/images/nginx:1.25/json"))

    @inlineCallbacks
    def test_negotiates_once(self):
        """The version is asked for once, however many requests follow."""
        engine = FakeEngine()
        engine.script("GET", "/v1.41/images/a:b/json", 404,
                      {"message": "no such image"})
        client = self.client(engine)
        results = yield client.image_exists(DockerImage("a", "b"))
        results2 = yield client.image_exists(DockerImage("a", "b"))
        self.assertEqual((results, results2), (False, False))
        self.assertEqual([p for p in engine.paths() if p[1] == "/version"],
                         [("GET", "/version")])

    @inlineCallbacks
    def test_engine_too_old(self):
        """An engine older than we can use is a clear error."""
        engine = FakeEngine(api_version="1.20")
        error = yield self.assertFailure(
            self.client(engine).image_exists(BUSYBOX_IMAGE), DockerError)
        self.assertIn("speaks API 1.20", error.message)

    @inlineCallbacks
    def test_create_request(self):
        """``add`` creates the container from the model, then starts it."""
        engine = FakeEngine()
        engine.script("POST", "/v1.41/containers/create", 201,
                      {"Id": "c0ffee", "Warnings": []})
        engine.script("POST", "/v1.41/containers/c0ffee/start", 204, None)
        engine.script("GET", "/v1.41/containers/c0ffee/json", 200, _inspect(
            Memory=WEB.mem_limit, CpuShares=256,
            RestartPolicy={"Name": "on-failure", "MaximumRetryCount": 5}))
        engine.script("GET", "/v1.41/images/sha256:1234/json", 200,
                      {"Config": {"Env": ["PATH=/usr/bin"]}})
        unit = yield self.client(engine).add(WEB, "/flocker/web")
        create = engine.requests[1]
        self.assertEqual(create["args"], {"name": [container_name("web")]})
        self.assertEqual(create["content_type"], "application/json")
        self.assertEqual(json.loads(create["body"]), {
            "Image": "nginx:1.25",
            "Env": ["A=1", "B=2"],
            "Labels": {
                APPLICATION_LABEL: "web",
                DIGEST_LABEL: configuration_digest(WEB, "/flocker/web"),
            },
            "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
            "HostConfig": {
                "PortBindings": {
                    "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                    "443/tcp": [{"HostIp": "", "HostPort": "8443"}],
                },
                "Binds": ["/flocker/web:/data"],
                "Memory": 128 * 1024 * 1024,
                "CpuShares": 256,
                "RestartPolicy": {"Name": "on-failure",
                                  "MaximumRetryCount": 5},
            },
        })
        self.assertEqual(engine.paths()[2],
                         ("POST", "/v1.41/containers/c0ffee/start"))
        # The image's own PATH is not reported as the application's.
        self.assertEqual(
            (unit.environment, unit.ports, unit.mem_limit, unit.cpu_shares,
             unit.restart_policy, unit.config_digest),
            ((("A", "1"),), frozenset([Port(80, 8080)]), WEB.mem_limit, 256,
             RestartPolicy("on-failure", 5), "d1"))

    @inlineCallbacks
    def test_failed_start_removes_container(self):
        """A container that fails to start is force-removed; the start
        error is what the caller sees."""
        engine = FakeEngine()
        engine.script("POST", "/v1.41/containers/create", 201, {"Id": "c0ffee"})
        engine.script("POST", "/v1.41/containers/c0ffee/start", 500,
                      {"message": "port is already allocated"})
        engine.script("DELETE", "/v1.41/containers/c0ffee", 204, None)
        app = Application(name="web", image=BUSYBOX_IMAGE)
        error = yield self.assertFailure(self.client(engine).add(app),
                                         DockerError)
        self.assertEqual((error.status, error.message),
                         (500, "port is already allocated"))
        delete = engine.requests[-1]
        self.assertEqual(
            (delete["method"], delete["path"], delete["args"]),
            ("DELETE", "/v1.41/containers/c0ffee",
             {"force": ["1"], "v": ["1"]}))

    @inlineCallbacks
    def test_list_filters_by_label(self):
        """``list`` asks for every container with the application label."""
        engine = FakeEngine()
        engine.script("GET", "/v1.41/containers/json", 200,
                      [{"Id": "c0ffee"}, {"Id": "gone"}])
        engine.script("GET", "/v1.41/containers/c0ffee/json", 200,
                      _inspect(status="exited"))
        engine.script("GET", "/v1.41/containers/gone/json", 404,
                      {"message": "No such container: gone"})
        engine.script("GET", "/v1.41/images/sha256:1234/json", 200,
                      {"Config": {"Env": ["PATH=/usr/bin"]}})
        units = yield self.client(engine).list()
        listing = engine.requests[1]
        self.assertEqual(listing["args"], {
            "all": ["1"],
            "filters": [json.dumps({"label": [APPLICATION_LABEL]})]})
        [unit] = units
        self.assertEqual((unit.name, unit.status, unit.running,
                          unit.volume.host_path, unit.volume.mountpoint),
                         ("web", "exited", False, "/flocker/web", "/data"))

    @inlineCallbacks
    def test_stop_request(self):
        """``stop`` passes the timeout; 304 (already stopped) is success."""
        engine = FakeEngine()
        engine.script("POST", "/v1.41/containers/flocker-web/stop", 304, None)
        yield self.client(engine).stop("web", timeout=7)
        self.assertEqual(engine.requests[-1]["args"], {"t": ["7"]})

    @inlineCallbacks
    def test_error_carries_engine_message(self):
        """A refusal is a DockerError with the engine's message and status."""
        engine = FakeEngine()
        engine.script("DELETE", "/v1.41/containers/flocker-web", 409,
                      {"message": "You cannot remove a running container"})
        error = yield self.assertFailure(self.client(engine).remove("web"),
                                         DockerError)
        self.assertEqual((error.status, error.message),
                         (409, "You cannot remove a running container"))
        self.assertIn("HTTP 409", str(error))

    @inlineCallbacks
    def test_pull_stream_error(self):
        """An error inside a pull's progress stream fails the pull."""
        engine = FakeEngine()
        stream = (b'{"status":"Pulling from library/nginx"}\r\n'
                  b'{"errorDetail":{"message":"manifest unknown"},'
                  b'"error":"manifest unknown"}\r\n')
        engine.script("POST", "/v1.41/images/create", 200, stream)
        error = yield self.assertFailure(
            self.client(engine).pull_image(DockerImage("nginx", "9")),
            DockerError)
        self.assertEqual(error.message, "manifest unknown")
        self.assertEqual(engine.requests[-1]["args"],
                         {"fromImage": ["nginx"], "tag": ["9"]})

    @inlineCallbacks
    def test_pull_success(self):
        engine = FakeEngine()
        engine.script("POST", "/v1.41/images/create", 200,
                      b'{"status":"Status: Downloaded newer image"}\r\n')
        result = yield self.client(engine).pull_image(DockerImage("nginx"))
        self.assertIsNone(result)


class MissingSocketTests(TestCase):
    """Talking to an engine that is not there."""

    def missing_socket(self):
        # Short, absent and unique: trial's temp paths exceed sun_path.
        return "/tmp/fat-nosock-%s/docker.sock" % (uuid.uuid4().hex[:8],)

    @inlineCallbacks
    def test_names_socket(self):
        """The error names the socket path and says it is missing."""
        path = self.missing_socket()
        client = DockerClient(reactor, socket_path=path)
        error = yield self.assertFailure(client.list(), DockerError)
        self.assertIn(path, error.message)
        self.assertIn("no such socket", error.message)
        self.assertIsNone(error.status)

    @inlineCallbacks
    def test_retries_negotiation(self):
        """A failed negotiation is not remembered: the next call tries again."""
        path = self.missing_socket()
        client = DockerClient(reactor, socket_path=path)
        yield self.assertFailure(client.list(), DockerError)
        error = yield self.assertFailure(client.api_version(), DockerError)
        self.assertIn(path, error.message)

    @inlineCallbacks
    def test_path_too_long(self):
        """A socket path the kernel cannot take is a clear error."""
        path = "/tmp/" + "x" * 120 + "/docker.sock"
        client = DockerClient(reactor, socket_path=path)
        error = yield self.assertFailure(client.list(), DockerError)
        self.assertIn("at most 107 bytes", error.message)


class BusyboxTarballTests(SynchronousTestCase):
    """The offline busybox image's root filesystem."""

    def setUp(self):
        if not os.path.exists(images.BUSYBOX_BINARY):
            from twisted.trial.unittest import SkipTest
            raise SkipTest("busybox-static is not installed")
        self.cache = os.path.abspath(self.mktemp())

    def test_contents(self):
        """busybox, applet symlinks and the serve script are in the tarball."""
        path = images.busybox_tarball(self.cache)
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            script = tar.extractfile(images.SERVE_PATH).read()
        self.assertTrue(members["bin/busybox"].isfile())
        self.assertEqual(members["bin/busybox"].size,
                         os.path.getsize(images.BUSYBOX_BINARY))
        for applet in ("sh", "httpd", "nc", "sleep", "cat"):
            self.assertEqual((members["bin/" + applet].issym(),
                              members["bin/" + applet].linkname),
                             (True, "busybox"))
        self.assertEqual(script, images.SERVE_SCRIPT)

    def test_cached(self):
        """A second call reuses the tarball; the bytes are reproducible."""
        first = images.busybox_tarball(self.cache)
        with open(first, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        os.utime(first, (0, 0))
        second = images.busybox_tarball(self.cache)
        self.assertEqual((second, os.stat(second).st_mtime), (first, 0))
        other = images.busybox_tarball(os.path.abspath(self.mktemp()))
        with open(other, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)

    def test_inputs_change_key(self):
        """Different applets give a different cached tarball."""
        first = images.busybox_tarball(self.cache)
        second = images.busybox_tarball(self.cache, applets=("sh",))
        self.assertNotEqual(first, second)

    def test_failed_build_leaves_nothing(self):
        """A build that fails leaves no tarball, partial or complete."""

        def broken(path):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("disk full")

        self.assertRaises(RuntimeError, images.cached_tarball,
                          self.cache, "broken", {"x": 1}, broken)
        self.assertEqual(os.listdir(os.path.join(self.cache, "images")), [])


class SilentEngineTests(TestCase):
    """An engine that accepts connections and never answers (a stuck
    dockerd) fails the request in time, naming the socket."""

    async def test_request_times_out(self):
        """
        The request timeout runs on the injected clock: a real UNIX socket
        whose engine reads the request and never answers fails the request
        when the clock reaches the timeout, and the connection is closed.
        """
        path = "/tmp/fat-silent-%s.sock" % (uuid.uuid4().hex[:8],)
        requested = Deferred()
        lost = Deferred()

        class Silent(Protocol):  # reads, never writes
            def dataReceived(self, data):
                if not requested.called:
                    requested.callback(data)

            def connectionLost(self, reason):
                lost.callback(None)
        port = reactor.listenUNIX(path, Factory.forProtocol(Silent))
        self.addCleanup(port.stopListening)
        clock = Clock()
        client = DockerClient(reactor, socket_path=path, request_timeout=0.5,
                              clock=clock)
        d = client.list()
        request = await requested
        self.assertTrue(request.startswith(b"GET /version "), request)
        clock.advance(0.4)
        self.assertNoResult(d)
        clock.advance(0.1)
        error = self.failureResultOf(d, DockerError).value
        self.assertEqual(error.message, "the Docker engine at %s did not "
                         "answer GET /version within 0.5 s" % (path,))
        await lost
