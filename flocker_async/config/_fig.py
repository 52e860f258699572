"""
The fig/compose application file: services at the top level (fig) or under
``services:`` (compose ``version: "2"``/``"3"``), turned into the same
model as the v1 format.  Keys that cannot be honoured are refused by name.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

from .._yaml import format_path
from ..model import Application, AttachedVolume, Link, Port, RestartPolicy
from ..validation import (
    Path,
    Report,
    describe,
    is_int,
    valid_mapping,
    valid_name,
    valid_string,
)
from ._common import (
    ParsedApplications,
    check_links,
    valid_cpu_shares,
    valid_environment,
    valid_image,
    valid_mem_limit,
    valid_mountpoint,
)

# Keys we understand, and ones we recognise but cannot honour.
SERVICE_KEYS = ("image", "environment", "ports", "links", "volumes", "mem_limit",
                "cpu_shares", "restart")
_UNSUPPORTED = dict(
    (key, "%r cannot be honoured by flocker_async: %s" % (key, why))
    for key, why in [
        ("build", "images must be built beforehand and named with 'image'"),
        ("command", "the image's own command is used"),
        ("entrypoint", "the image's own entrypoint is used"),
        ("volumes_from", "each application has its own volume"),
        ("net", "networking is managed by flocker's proxies"),
        ("network_mode", "networking is managed by flocker's proxies"),
        ("networks", "networking is managed by flocker's proxies"),
        ("expose", "publish ports with 'ports'"),
        ("external_links", "link to applications of this file with 'links'"),
        ("env_file", "put the variables in 'environment'"),
        ("extends", "write the service out in full"),
        ("depends_on", "applications start independently"),
        ("privileged", "privileged containers are not supported"),
        ("cap_add", "extra capabilities are not supported"),
        ("devices", "device access is not supported"),
        ("dns", "DNS settings are not supported"),
        ("hostname", "host names are not supported"),
        ("working_dir", "the image's own working directory is used"),
        ("user", "the image's own user is used"),
        ("container_name", "containers are named after the application"),
        ("deploy", "placement comes from the deployment file"),
    ])
_COMPOSE_TOP_UNSUPPORTED = dict(
    (key, "top-level %r cannot be honoured by flocker_async: %s" % (key, why))
    for key, why in [
        ("volumes", "each service declares its own single volume"),
        ("networks", "networking is managed by flocker's proxies"),
        ("secrets", "secrets are not supported"),
        ("configs", "configs are not supported"),
    ])


def parse_fig(r: Report, doc: dict) -> Optional[ParsedApplications]:
    """A compose file (``services:``) or a fig file (services at the top)."""
    port_paths: dict = {}
    if "services" in doc:
        valid_mapping(r, (), doc, ("services",), ("version",), _COMPOSE_TOP_UNSUPPORTED)
        if "version" in doc and not (
                isinstance(doc["version"], str)
                and re.match(r"[23](\.\d+)?\Z", doc["version"])):
            r.error(("version",), 'expected a compose file version "2" or "3", got %s'
                    % (describe(doc["version"]),))
        services = doc["services"]
        if not isinstance(services, dict):
            r.error(("services",), "expected a mapping of service names to services, "
                                   "got %s" % (describe(services),))
            return None
        applications, invalid = _services(r, services, ("services",), port_paths)
        return ParsedApplications(applications, frozenset(invalid), port_paths)
    if "version" in doc:
        r.error(("version",), "expected version: 1 with an 'applications' mapping")
        return None
    applications, invalid = _services(r, doc, (), port_paths)
    return ParsedApplications(applications, frozenset(invalid), port_paths)


def _ports(r: Report, path: Path, value: Any, app: str,
           port_paths: dict) -> Optional[List[Port]]:
    if not isinstance(value, list):
        r.error(path, 'expected a list of "EXTERNAL:INTERNAL", got %s'
                % (describe(value),))
        return None
    ports: List[Port] = []
    internals: Dict[int, Path] = {}
    externals: Dict[int, Path] = {}
    ok = True
    for i, item in enumerate(value):
        p = path + (i,)
        text = item if isinstance(item, str) else None
        parts = text.split(":") if text else []
        if len(parts) != 2 or not all(x.isdigit() for x in parts):
            r.error(p, 'expected "EXTERNAL:INTERNAL" (like "8080:80"), got %s%s'
                    % (describe(item),
                       "; quote it, YAML reads 22:22 as a number"
                       if is_int(item) else ""))
            ok = False
            continue
        external, internal = int(parts[0]), int(parts[1])
        if not (1 <= external <= 65535 and 1 <= internal <= 65535):
            r.error(p, "expected port numbers from 1 to 65535, got %s"
                    % (json.dumps(text),))
            ok = False
            continue
        if internal in internals or external in externals:
            r.error(p, "port %s repeats %s" % (json.dumps(text), format_path(
                internals.get(internal) or externals.get(external))))
            ok = False
            continue
        internals[internal] = externals[external] = p
        port_paths.setdefault((app, external), p)
        ports.append(Port(internal_port=internal, external_port=external))
    return ports if ok else None


def _volumes(r: Report, path: Path, value: Any) -> Optional[AttachedVolume]:
    if not isinstance(value, list) or len(value) != 1:
        r.error(path, "expected a list with exactly one container path (one volume "
                      "per application), got %s"
                % (describe(value) if not isinstance(value, list)
                   else "%d entries" % (len(value),)))
        return None
    item = value[0]
    if isinstance(item, str) and ":" in item:
        r.error(path + (0,), "host paths cannot be honoured: give only the path "
                             "inside the container (the volume lives on the node)")
        return None
    mountpoint = valid_mountpoint(r, path + (0,), item)
    return None if mountpoint is None else AttachedVolume(mountpoint=mountpoint)


def _restart(r: Report, path: Path, value: Any) -> Optional[RestartPolicy]:
    if value is False:
        # YAML 1.1 reads an unquoted `no` as false.
        return RestartPolicy("never")
    text = value if isinstance(value, str) else None
    if text in ("no", "never"):
        return RestartPolicy("never")
    if text == "always":
        return RestartPolicy("always")
    if text == "on-failure":
        return RestartPolicy("on-failure")
    if text and text.startswith("on-failure:"):
        count = text.partition(":")[2]
        if count.isdigit() and int(count) >= 1:
            return RestartPolicy("on-failure", int(count))
    r.error(path, 'expected "no", "always", "on-failure" or "on-failure:N", got %s'
            % (describe(value),))
    return None


def _service(r: Report, path: Path, name: str, doc: Any,
             port_paths: dict) -> Tuple[Optional[dict], list]:
    """First pass: everything but links (they need the other services)."""
    before = len(r)
    if valid_mapping(r, path, doc, ("image",), SERVICE_KEYS[1:], _UNSUPPORTED,
                     what="a service mapping") is None:
        return None, []
    fields: Dict[str, Any] = {"name": name}
    if "image" in doc:
        fields["image"] = valid_image(r, path + ("image",), doc["image"])
    if doc.get("environment") is not None:
        fields["environment"] = valid_environment(
            r, path + ("environment",), doc["environment"], allow_list=True)
    if doc.get("ports") is not None:
        fields["ports"] = _ports(r, path + ("ports",), doc["ports"], name, port_paths)
    if doc.get("volumes") is not None:
        fields["volume"] = _volumes(r, path + ("volumes",), doc["volumes"])
    if doc.get("mem_limit") is not None:
        fields["mem_limit"] = valid_mem_limit(r, path + ("mem_limit",), doc["mem_limit"])
    if doc.get("cpu_shares") is not None:
        fields["cpu_shares"] = valid_cpu_shares(
            r, path + ("cpu_shares",), doc["cpu_shares"])
    if "restart" in doc:
        fields["restart_policy"] = _restart(r, path + ("restart",), doc["restart"])
    links = []
    if doc.get("links") is not None:
        if not isinstance(doc["links"], list):
            r.error(path + ("links",), 'expected a list of "service[:alias]", got %s'
                    % (describe(doc["links"]),))
        else:
            for i, item in enumerate(doc["links"]):
                p = path + ("links", i)
                text = valid_string(r, p, item, 'a link "service[:alias]"')
                if text is None:
                    continue
                target, _, alias = text.partition(":")
                alias = alias or target
                if valid_name(r, p, target) is None or valid_name(r, p, alias) is None:
                    continue
                links.append((p, target, alias))
    if len(r) > before:
        return None, []
    return fields, links


def _services(r: Report, services: dict, base: Path, port_paths: dict
              ) -> Tuple[Dict[str, Application], set]:
    firsts: Dict[str, dict] = {}
    pending: Dict[str, list] = {}
    invalid = set()
    for name, doc in services.items():
        path = base + (name,)
        if valid_name(r, path, name) is None:
            continue
        fields, links = _service(r, path, name, doc, port_paths)
        if fields is None:
            invalid.add(name)
            continue
        firsts[name] = fields
        pending[name] = links
    applications = {}
    for name, fields in firsts.items():
        links, ok = [], True
        for p, target, alias in pending[name]:
            if target not in services:
                r.error(p, "links to %s, which is not a service in this file"
                        % (json.dumps(target),))
                ok = False
                continue
            if target in invalid:
                continue
            target_ports = firsts.get(target, {}).get("ports") or []
            if not target_ports:
                r.error(p, "links to %s, which publishes no ports" % (target,))
                ok = False
                continue
            for port in sorted(target_ports):
                links.append(Link(local_port=port.internal_port,
                                  remote_port=port.external_port, alias=alias))
        if ok and links and not check_links(r, base + (name, "links"), links):
            ok = False
        if not ok:
            invalid.add(name)
            continue
        applications[name] = Application(links=links, **fields)
    return applications, invalid
