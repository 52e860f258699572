"""
The Flocker v1 application file: ``version: 1`` with
``applications: {NAME: {image, environment, ports, links, volume,
mem_limit, cpu_shares, restart_policy}}``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .._yaml import format_path
from ..model import Application, AttachedVolume, Link, Port, RestartPolicy
from ..validation import (
    Path,
    Report,
    describe,
    valid_duration,
    valid_integer,
    valid_mapping,
    valid_name,
    valid_port,
    valid_size,
)
from ._common import (
    ParsedApplications,
    check_links,
    check_version,
    valid_cpu_shares,
    valid_environment,
    valid_image,
    valid_mem_limit,
    valid_mountpoint,
)

APPLICATION_KEYS = ("image", "environment", "ports", "links", "volume",
                    "mem_limit", "cpu_shares", "restart_policy")
VOLUME_KEYS = ("mountpoint", "maximum_size", "replication_interval")


def is_v1(doc: dict) -> bool:
    """Whether an application document is in the v1 form (not fig/compose)."""
    return "applications" in doc or doc.get("version") == 1


def parse_v1(r: Report, doc: dict) -> Optional[ParsedApplications]:
    valid_mapping(r, (), doc, ("version", "applications"), ())
    check_version(r, doc)
    apps_doc = doc.get("applications")
    if apps_doc is None and "applications" in doc:
        apps_doc = {}
    if not isinstance(apps_doc, dict):
        if "applications" in doc:
            r.error(("applications",), "expected a mapping of application names "
                    "to applications, got %s" % (describe(apps_doc),))
        return None
    port_paths: dict = {}
    applications, invalid = {}, set()
    for name, app_doc in apps_doc.items():
        path = ("applications", name)
        if valid_name(r, path, name) is None:
            continue
        app = _application(r, path, name, app_doc, port_paths)
        if app is None:
            invalid.add(name)
        else:
            applications[name] = app
    return ParsedApplications(applications, frozenset(invalid), port_paths)


def _application(r: Report, path: Path, name: str, doc: Any,
                 port_paths: dict) -> Optional[Application]:
    before = len(r)
    if valid_mapping(r, path, doc, ("image",), APPLICATION_KEYS[1:]) is None:
        return None
    fields: Dict[str, Any] = {"name": name}
    if "image" in doc:
        fields["image"] = valid_image(r, path + ("image",), doc["image"])
    if "environment" in doc and doc["environment"] is not None:
        fields["environment"] = valid_environment(
            r, path + ("environment",), doc["environment"], allow_list=False)
    if "ports" in doc and doc["ports"] is not None:
        fields["ports"] = _ports(r, path + ("ports",), doc["ports"], name, port_paths)
    if "links" in doc and doc["links"] is not None:
        fields["links"] = _links(r, path + ("links",), doc["links"])
    if "volume" in doc and doc["volume"] is not None:
        fields["volume"] = _volume(r, path + ("volume",), doc["volume"])
    if "mem_limit" in doc and doc["mem_limit"] is not None:
        fields["mem_limit"] = valid_mem_limit(r, path + ("mem_limit",), doc["mem_limit"])
    if "cpu_shares" in doc and doc["cpu_shares"] is not None:
        fields["cpu_shares"] = valid_cpu_shares(
            r, path + ("cpu_shares",), doc["cpu_shares"])
    if "restart_policy" in doc and doc["restart_policy"] is not None:
        fields["restart_policy"] = _restart_policy(
            r, path + ("restart_policy",), doc["restart_policy"])
    if len(r) > before:
        return None
    return Application(**fields)


def _ports(r: Report, path: Path, value: Any, app: str,
           port_paths: dict) -> Optional[List[Port]]:
    if not isinstance(value, list):
        r.error(path, "expected a list of {internal, external}, got %s"
                % (describe(value),))
        return None
    ports: List[Port] = []
    internals: Dict[int, Path] = {}
    externals: Dict[int, Path] = {}
    ok = True
    for i, item in enumerate(value):
        p = path + (i,)
        if valid_mapping(r, p, item, ("internal", "external"), ()) is None:
            ok = False
            continue
        before = len(r)
        internal = valid_port(r, p + ("internal",), item.get("internal")) \
            if "internal" in item else None
        external = valid_port(r, p + ("external",), item.get("external")) \
            if "external" in item else None
        if len(r) > before or internal is None or external is None:
            ok = False
            continue
        if internal in internals:
            r.error(p + ("internal",), "internal port %d is already published by %s"
                    % (internal, format_path(internals[internal])))
            ok = False
        if external in externals:
            r.error(p + ("external",), "external port %d is already used by %s"
                    % (external, format_path(externals[external])))
            ok = False
        internals.setdefault(internal, p + ("internal",))
        externals.setdefault(external, p + ("external",))
        port_paths.setdefault((app, external), p + ("external",))
        ports.append(Port(internal_port=internal, external_port=external))
    return ports if ok else None


def _links(r: Report, path: Path, value: Any) -> Optional[List[Link]]:
    if not isinstance(value, list):
        r.error(path, "expected a list of {local_port, remote_port, alias}, got %s"
                % (describe(value),))
        return None
    links: List[Link] = []
    ok = True
    for i, item in enumerate(value):
        p = path + (i,)
        if valid_mapping(r, p, item, ("local_port", "remote_port", "alias"), ()) is None:
            ok = False
            continue
        before = len(r)
        local = valid_port(r, p + ("local_port",), item["local_port"]) \
            if "local_port" in item else None
        remote = valid_port(r, p + ("remote_port",), item["remote_port"]) \
            if "remote_port" in item else None
        alias = valid_name(r, p + ("alias",), item["alias"]) if "alias" in item else None
        if len(r) > before or local is None or remote is None or alias is None:
            ok = False
            continue
        links.append(Link(local_port=local, remote_port=remote, alias=alias))
    if ok and not check_links(r, path, links):
        return None
    return links if ok else None


def _volume(r: Report, path: Path, value: Any) -> Optional[AttachedVolume]:
    if valid_mapping(r, path, value, VOLUME_KEYS[:1], VOLUME_KEYS[1:]) is None:
        return None
    before = len(r)
    mountpoint = valid_mountpoint(r, path + ("mountpoint",), value["mountpoint"]) \
        if "mountpoint" in value else None
    maximum_size = None
    if value.get("maximum_size") is not None:
        maximum_size = valid_size(r, path + ("maximum_size",), value["maximum_size"])
    replication_interval = None
    if value.get("replication_interval") is not None:
        replication_interval = valid_duration(
            r, path + ("replication_interval",), value["replication_interval"])
    if len(r) > before or mountpoint is None:
        return None
    return AttachedVolume(mountpoint=mountpoint, maximum_size=maximum_size,
                          replication_interval=replication_interval)


def _restart_policy(r: Report, path: Path, value: Any) -> Optional[RestartPolicy]:
    if valid_mapping(r, path, value, ("name",), ("maximum_retry_count",)) is None:
        return None
    name = value.get("name")
    if "name" in value and name not in ("never", "always", "on-failure"):
        r.error(path + ("name",), "expected one of never, always, on-failure; got %s"
                % (describe(name),))
        return None
    if "name" not in value:
        return None
    count = None
    if "maximum_retry_count" in value:
        if name != "on-failure":
            r.error(path + ("maximum_retry_count",),
                    "maximum_retry_count is only allowed with name: on-failure "
                    "(name is %s)" % (name,))
            return None
        count = valid_integer(r, path + ("maximum_retry_count",),
                              value["maximum_retry_count"], 1, 2 ** 31 - 1)
        if count is None:
            return None
    return RestartPolicy(name=name, maximum_retry_count=count)
