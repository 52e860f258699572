"""
``DockerClient``: the Docker Engine API over its UNIX socket, with treq.

Requests go through an ``Agent`` whose endpoints are ``UNIXClientEndpoint``s,
so nothing here blocks and nothing reaches for the global reactor.  The API
version is negotiated once with ``/version``: the lower of the engine's and
``MAX_API_VERSION``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional
from urllib.parse import quote

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent, FileBodyProducer, HTTPConnectionPool, ResponseFailed)
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from treq.client import HTTPClient
from zope.interface import implementer

from flocker_async.model import DockerImage, Port, RestartPolicy

from ._interfaces import (
    APPLICATION_LABEL, DIGEST_LABEL, BoundVolume, DockerError, IDockerClient,
    Unit, configuration_digest, container_name)

__all__ = ["DockerClient", "DEFAULT_SOCKET_PATH", "MAX_API_VERSION",
           "MIN_API_VERSION"]

DEFAULT_SOCKET_PATH = "/var/run/docker.sock"
# The newest API this client was written against, and the oldest it can use
# (label filters as JSON and HostConfig on create need 1.24).
MAX_API_VERSION = (1, 41)
MIN_API_VERSION = (1, 24)

# Seconds the engine has to answer a request in full; pulling or importing
# an image may take much longer than anything else.
REQUEST_TIMEOUT = 120
IMAGE_TIMEOUT = 1800

_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL

_RESTART_TO_DOCKER = {"never": "no", "always": "always",
                      "on-failure": "on-failure"}


def _parse_version(text) -> tuple:
    try:
        return tuple(int(part) for part in str(text).split("."))
    except ValueError:
        raise DockerError("engine reported an unreadable API version %r"
                          % (text,))


def _format_version(version: tuple) -> str:
    return ".".join(str(part) for part in version)


def _engine_message(body: bytes) -> str:
    """The ``message`` of an engine error body, or the body as text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if isinstance(parsed, dict) and "message" in parsed:
        return str(parsed["message"])
    return text


def _stream_error(body: bytes) -> Optional[str]:
    """
    The first error in a progress stream (pull, import), which the engine
    reports inside a 200 response once streaming has begun.
    """
    decoder = json.JSONDecoder()
    text = body.decode("utf-8", "replace")
    index = 0
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        try:
            event, index = decoder.raw_decode(text, index)
        except ValueError:
            return None
        if isinstance(event, dict) and event.get("error"):
            detail = event.get("errorDetail") or {}
            return str(detail.get("message") or event["error"])
    return None


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory, written at once (small JSON)."""

    def __init__(self, body: bytes):
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@implementer(IAgentEndpointFactory)
class _UNIXEndpointFactory:
    """Every URL is served by the engine's socket."""

    def __init__(self, reactor, socket_path: str):
        self._reactor = reactor
        self._socket_path = socket_path

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(self._reactor, self._socket_path)


@implementer(IDockerClient)
class DockerClient:
    """
    The Docker engine listening on ``socket_path``.

    ``agent`` replaces the UNIX-socket agent (tests pass an in-memory one);
    ``clock`` (default: ``reactor``) runs the request timeouts.
    """

    log = Logger()

    def __init__(self, reactor, socket_path: str = DEFAULT_SOCKET_PATH,
                 agent=None, request_timeout: float = REQUEST_TIMEOUT,
                 clock: Optional[IReactorTime] = None):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self.socket_path = socket_path
        self.request_timeout = request_timeout
        if agent is None:
            # Non-persistent: an idle keep-alive connection would outlive the
            # caller's interest and has no one to close it.
            pool = HTTPConnectionPool(reactor, persistent=False)
            agent = Agent.usingEndpointFactory(
                reactor, _UNIXEndpointFactory(reactor, socket_path), pool=pool)
        self._cooperator = Cooperator(
            scheduler=lambda work: reactor.callLater(0, work))
        self._http = HTTPClient(agent,
                                data_to_body_producer=self._body_producer)
        self._api_version: Optional[tuple] = None
        self._negotiation_waiters: Optional[list] = None

    def _body_producer(self, data):
        if IBodyProducer.providedBy(data):
            return data
        if isinstance(data, str):
            data = data.encode("utf-8")
        if isinstance(data, bytes):
            return _BytesProducer(data)
        # A file: streamed in chunks with the engine's flow control.
        return FileBodyProducer(data, cooperator=self._cooperator)

    # -- HTTP plumbing ---------------------------------------------------

    def _unreachable(self, failure: Failure) -> Failure:
        """Turn a transport failure into a DockerError naming the socket."""
        if failure.check(ConnectError, ConnectingCancelledError):
            if not os.path.exists(self.socket_path):
                why = "no such socket (is dockerd running?)"
            else:
                why = failure.getErrorMessage()
            raise DockerError("cannot connect to the Docker engine at %s: %s"
                              % (self.socket_path, why))
        if failure.check(ResponseFailed):
            reasons = "; ".join(r.getErrorMessage()
                                for r in failure.value.reasons)
            raise DockerError("connection to the Docker engine at %s failed:"
                              " %s" % (self.socket_path, reasons))
        return failure

    def _raw_request(self, method, path, params=None, body=None,
                     content_type=None, timeout=None):
        """
        Send a request; fire with ``(status, body bytes)`` whatever the
        status, or fail with a DockerError when the engine has not answered
        in full within ``timeout`` seconds (a stuck dockerd never holds a
        convergence for ever).
        """
        if timeout is None:
            timeout = self.request_timeout
        d = Deferred.fromCoroutine(self._raw_request_coroutine(
            method, path, params, body, content_type))

        def timed_out(result, seconds):
            raise DockerError("the Docker engine at %s did not answer %s %s "
                              "within %g s" % (self.socket_path, method,
                                               path.split("?")[0], seconds))
        return d.addTimeout(timeout, self._clock, onTimeoutCancel=timed_out)

    async def _raw_request_coroutine(self, method, path, params, body,
                                     content_type):
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            # The kernel refuses it, and Twisted's connector then never
            # reports back; say so instead of hanging.
            raise DockerError("cannot connect to the Docker engine at %s: a "
                              "UNIX socket path is at most %d bytes"
                              % (self.socket_path, _MAX_SOCKET_PATH))
        headers: Dict[str | bytes, List[str | bytes]] = {}
        if content_type is not None:
            headers["Content-Type"] = [content_type]
        d = self._http.request(
            method, "http://docker" + path, params=params, data=body,
            headers=headers, allow_redirects=False, reactor=self._reactor)
        d.addErrback(self._unreachable)
        response = await d
        content = await response.content().addErrback(self._unreachable)
        return response.code, content

    async def _request(self, method, path, params=None, json_body=None,
                       body=None, content_type=None, ok=(200, 201, 204),
                       timeout=None):
        """
        A request against the negotiated API version.  Fails with
        ``DockerError`` unless the status is in ``ok``.
        """
        version = await self._negotiated_version()
        if json_body is not None:
            body = json.dumps(json_body, sort_keys=True).encode("utf-8")
            content_type = "application/json"
        status, content = await self._raw_request(
            method, "/v%s%s" % (_format_version(version), path),
            params=params, body=body, content_type=content_type,
            timeout=timeout)
        if status not in ok:
            raise DockerError(_engine_message(content), status)
        return status, content

    def _negotiated_version(self) -> "Deferred[tuple]":
        if self._api_version is not None:
            return succeed(self._api_version)
        waiter: "Deferred[tuple]" = Deferred()
        if self._negotiation_waiters is not None:
            self._negotiation_waiters.append(waiter)
            return waiter
        self._negotiation_waiters = [waiter]

        def finished(result):
            waiters, self._negotiation_waiters = (
                self._negotiation_waiters or [], None)
            if not isinstance(result, Failure):
                self._api_version = result
            for each in waiters:
                each.callback(result)

        Deferred.fromCoroutine(self._negotiate()).addBoth(finished)
        return waiter

    async def _negotiate(self) -> tuple:
        status, content = await self._raw_request("GET", "/version")
        if status != 200:
            raise DockerError(_engine_message(content), status)
        info = json.loads(content)
        engine = _parse_version(info["ApiVersion"])
        engine_min = _parse_version(info.get("MinAPIVersion", "1.12"))
        version = min(engine, MAX_API_VERSION)
        if version < MIN_API_VERSION or version < engine_min:
            raise DockerError(
                "the Docker engine at %s speaks API %s (oldest %s); this "
                "client needs %s to %s" % (
                    self.socket_path, _format_version(engine),
                    _format_version(engine_min),
                    _format_version(MIN_API_VERSION),
                    _format_version(MAX_API_VERSION)))
        self.log.debug("Docker engine at {socket} speaks API {engine}; using "
                       "{version}", socket=self.socket_path,
                       engine=_format_version(engine),
                       version=_format_version(version))
        return version

    def api_version(self) -> "Deferred[str]":
        """Fire with the negotiated API version, e.g. ``"1.41"``."""
        return self._negotiated_version().addCallback(_format_version)

    # -- IDockerClient ---------------------------------------------------

    def list(self):
        return Deferred.fromCoroutine(self._list())

    async def _list(self):
        _, content = await self._request(
            "GET", "/containers/json",
            params={"all": "1",
                    "filters": json.dumps({"label": [APPLICATION_LABEL]})})
        units = set()
        image_env: Dict[str, frozenset] = {}
        for summary in json.loads(content):
            try:
                unit = await self._inspect(summary["Id"], image_env)
            except DockerError as e:
                if e.status == 404:
                    continue  # removed between listing and inspecting
                raise
            units.add(unit)
        return frozenset(units)

    async def _inspect(self, container, image_env=None) -> Unit:
        _, content = await self._request(
            "GET", "/containers/%s/json" % (quote(container, safe=""),))
        info = json.loads(content)
        image_id = info.get("Image", "")
        if image_env is None:
            image_env = {}
        if image_id not in image_env:
            image_env[image_id] = await self._image_environment(image_id)
        return _unit_from_inspect(info, image_env[image_id])

    async def _image_environment(self, image_id: str) -> frozenset:
        try:
            _, content = await self._request(
                "GET", "/images/%s/json" % (quote(image_id, safe=""),))
        except DockerError as e:
            if e.status == 404:
                return frozenset()
            raise
        config = json.loads(content).get("Config") or {}
        return frozenset(config.get("Env") or ())

    def add(self, application, volume_path=None):
        try:
            body = _create_body(application, volume_path)
        except ValueError:
            return fail()
        return Deferred.fromCoroutine(self._add(application, body))

    async def _add(self, application, body):
        name = container_name(application.name)
        _, content = await self._request(
            "POST", "/containers/create", params={"name": name},
            json_body=body)
        container_id = json.loads(content)["Id"]
        try:
            await self._request(
                "POST", "/containers/%s/start" % (container_id,),
                ok=(204, 304))
        except DockerError:
            # add is all or nothing: a container that could not start is
            # removed so a retry can use the name.
            try:
                await self._request(
                    "DELETE", "/containers/%s" % (container_id,),
                    params={"force": "1", "v": "1"})
            except DockerError as e:
                self.log.warn("could not remove {name} after a failed start: "
                              "{error}", name=name, error=str(e))
            raise
        self.log.info("started {name} ({image}, digest {digest})", name=name,
                      image=application.image.full_name,
                      digest=body["Labels"][DIGEST_LABEL])
        return await self._inspect(container_id)

    def address(self, name):
        return Deferred.fromCoroutine(self._address(name))

    async def _address(self, name):
        _, content = await self._request(
            "GET", "/containers/%s/json" % (container_name(name),))
        info = json.loads(content)
        settings = info.get("NetworkSettings") or {}
        address = settings.get("IPAddress") or ""
        if not address:
            for network in (settings.get("Networks") or {}).values():
                address = (network or {}).get("IPAddress") or ""
                if address:
                    break
        if not (info.get("State") or {}).get("Running") or not address:
            raise DockerError("container %s is not running, so it has no address"
                              % (container_name(name),), 409)
        return address

    def stop(self, name, timeout=10):
        return Deferred.fromCoroutine(self._stop(name, timeout))

    async def _stop(self, name, timeout):
        status, _ = await self._request(
            "POST", "/containers/%s/stop" % (container_name(name),),
            params={"t": str(int(timeout))}, ok=(204, 304),
            timeout=timeout + self.request_timeout)
        self.log.info("stopped {name}{already}", name=container_name(name),
                      already=" (was not running)" if status == 304 else "")

    def remove(self, name):
        return Deferred.fromCoroutine(self._remove(name))

    async def _remove(self, name):
        # v=1 drops the anonymous volumes an image declares; bind mounts
        # (the flocker volume) are never touched by it.
        await self._request(
            "DELETE", "/containers/%s" % (container_name(name),),
            params={"v": "1"})
        self.log.info("removed {name}", name=container_name(name))

    def image_exists(self, image: DockerImage):
        return Deferred.fromCoroutine(self._image_exists(image))

    async def _image_exists(self, image):
        status, _ = await self._request(
            "GET", "/images/%s/json" % (quote(image.full_name, safe="/:"),),
            ok=(200, 404))
        return status == 200

    def pull_image(self, image: DockerImage):
        return Deferred.fromCoroutine(self._progress_request(
            "pulled", image, "POST", "/images/create",
            params={"fromImage": image.repository, "tag": image.tag},
            timeout=IMAGE_TIMEOUT))

    def import_image(self, tarball_path, image: DockerImage, changes=()):
        try:
            tarball = open(tarball_path, "rb")
        except OSError:
            return fail()
        params = [("fromSrc", "-"), ("repo", image.repository),
                  ("tag", image.tag)]
        params.extend(("changes", change) for change in changes)

        def close(result):
            tarball.close()
            return result

        d = Deferred.fromCoroutine(self._progress_request(
            "imported", image, "POST", "/images/create", params=params,
            body=tarball, content_type="application/x-tar",
            timeout=IMAGE_TIMEOUT))
        return d.addBoth(close)

    async def _progress_request(self, event, image, method, path, **kwargs):
        status, content = await self._request(method, path, **kwargs)
        error = _stream_error(content)
        if error is not None:
            raise DockerError(error, status)
        self.log.info("{event} {image}", event=event, image=image.full_name)
        return None


def _create_body(application, volume_path) -> dict:
    """The ``/containers/create`` body for ``application``."""
    if (application.volume is None) != (volume_path is None):
        raise ValueError(
            "application %r: a volume path is needed exactly when the "
            "application has a volume" % (application.name,))
    exposed: Dict[str, dict] = {}
    bindings: Dict[str, List[Dict[str, str]]] = {}
    for port in sorted(application.ports):
        key = "%d/tcp" % (port.internal_port,)
        exposed[key] = {}
        bindings.setdefault(key, []).append(
            {"HostIp": "", "HostPort": str(port.external_port)})
    policy = application.restart_policy
    binds: List[str] = []
    host_config: Dict[str, Any] = {
        "PortBindings": bindings,
        "Binds": binds,
        "Memory": application.mem_limit or 0,
        "CpuShares": application.cpu_shares or 0,
        "RestartPolicy": {
            "Name": _RESTART_TO_DOCKER[policy.name],
            "MaximumRetryCount": policy.maximum_retry_count or 0,
        },
    }
    if application.volume is not None:
        binds.append(
            "%s:%s" % (volume_path, application.volume.mountpoint))
    return {
        "Image": application.image.full_name,
        "Env": ["%s=%s" % pair for pair in application.environment],
        "Labels": {
            APPLICATION_LABEL: application.name,
            DIGEST_LABEL: configuration_digest(application, volume_path),
        },
        "ExposedPorts": exposed,
        "HostConfig": host_config,
    }


def _unit_from_inspect(info: dict, image_env: frozenset) -> Unit:
    """A ``Unit`` from ``/containers/{id}/json``."""
    config = info.get("Config") or {}
    host = info.get("HostConfig") or {}
    labels = config.get("Labels") or {}
    environment = []
    for entry in config.get("Env") or ():
        if entry in image_env:
            continue
        key, _, value = entry.partition("=")
        environment.append((key, value))
    ports = set()
    for key, bound in (host.get("PortBindings") or {}).items():
        number, _, protocol = key.partition("/")
        if protocol != "tcp":
            continue
        for binding in bound or ():
            if binding.get("HostPort"):
                ports.add(Port(internal_port=int(number),
                               external_port=int(binding["HostPort"])))
    volume = None
    for bind in host.get("Binds") or ():
        host_path, mountpoint = bind.split(":")[:2]
        volume = BoundVolume(host_path=host_path, mountpoint=mountpoint)
        break
    restart = host.get("RestartPolicy") or {}
    restart_name = restart.get("Name") or "no"
    if restart_name == "on-failure":
        policy = RestartPolicy("on-failure",
                               restart.get("MaximumRetryCount") or None)
    elif restart_name in ("always", "unless-stopped"):
        policy = RestartPolicy("always")
    else:
        policy = RestartPolicy("never")
    return Unit(
        name=labels.get(APPLICATION_LABEL, ""),
        container_id=info["Id"],
        status=(info.get("State") or {}).get("Status", "unknown"),
        image=DockerImage.from_string(config.get("Image", "")),
        config_digest=labels.get(DIGEST_LABEL),
        environment=environment,
        ports=ports,
        volume=volume,
        mem_limit=host.get("Memory") or None,
        cpu_shares=host.get("CpuShares") or None,
        restart_policy=policy,
    )
