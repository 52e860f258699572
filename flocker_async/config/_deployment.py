"""
The deployment file (``version: 1``, ``nodes: {ADDRESS: [NAME...]}``, and
optionally ``standby: {NAME: [ADDRESS...]}``), the checks across both
files, and the entry points that read and validate a configuration.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from attrs import frozen

from .._yaml import format_path
from ..model import Deployment, Node
from ..validation import (
    ConfigurationError,
    Path,
    Problem,
    Report,
    describe,
    read_document,
    read_file,
    valid_mapping,
    valid_name,
)
from ._common import ParsedApplications, check_version
from ._fig import parse_fig
from ._v1 import is_v1, parse_v1

_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")

# [(a name, its path, [(a name it maps to, that one's path)])]: nodes to
# the applications they run, and applications to their standby nodes.
_Entries = List[Tuple[str, Path, List[Tuple[str, Path]]]]


@frozen
class _DeploymentDocument:
    """What the deployment file says, with where each entry came from."""

    nodes: _Entries
    standby: _Entries
    addresses: frozenset  # every valid key of nodes, even one whose list is not


# --- application files ---------------------------------------------------------------

def parse_applications(r: Report, doc: Any) -> Optional[ParsedApplications]:
    """An application document in either format."""
    if not isinstance(doc, dict):
        r.error((), "expected a mapping at the top level (version: 1 with "
                    "applications, or compose services), got %s" % (describe(doc),))
        return None
    if is_v1(doc):
        return parse_v1(r, doc)
    return parse_fig(r, doc)


# --- deployment files -------------------------------------------------------------

def normalise_node_address(value: Any) -> Tuple[Optional[str], Optional[str]]:
    """(normal form, None) for an IP address or host name; (None, why)
    otherwise."""
    if not isinstance(value, str):
        return None, ("expected a node's IP address or host name, got %s"
                      % (describe(value),))
    try:
        return str(ipaddress.ip_address(value)), None
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if (len(value) <= 253 and value and all(_HOSTNAME_LABEL.match(l) for l in labels)
            and not labels[-1].isdigit()):
        return value.rstrip(".").lower(), None
    return None, ("expected a node's IP address or host name, got %s"
                  % (json.dumps(value),))


def _parse_deployment(r: Report, doc: Any) -> Optional[_DeploymentDocument]:
    if not isinstance(doc, dict):
        r.error((), "expected a mapping with 'version: 1' and 'nodes', got %s"
                % (describe(doc),))
        return None
    valid_mapping(r, (), doc, ("version", "nodes"), ("standby",))
    check_version(r, doc)
    # Checked even when nodes is unusable, so every problem shows at once.
    standby = _parse_standby(r, doc.get("standby"))
    if "nodes" not in doc:
        return None
    nodes_doc = doc["nodes"]
    if not isinstance(nodes_doc, dict):
        r.error(("nodes",), "expected a mapping of node addresses to lists of "
                            "application names, got %s" % (describe(nodes_doc),))
        return None
    result: _Entries = []
    seen: Dict[str, Path] = {}
    for key, names in nodes_doc.items():
        path: Path = ("nodes", key)
        address = _address(r, path, key)
        if address is None:
            continue
        if address in seen:
            r.error(path, "node %s is listed twice (also as %s)"
                    % (address, format_path(seen[address])))
            continue
        seen[address] = path
        if not isinstance(names, list):
            r.error(path, "expected a list of application names (use [] for none), "
                          "got %s" % (describe(names),))
            continue
        entries: List[Tuple[str, Path]] = []
        for i, name in enumerate(names):
            if valid_name(r, path + (i,), name) is not None:
                entries.append((name, path + (i,)))
        result.append((address, path, entries))
    return _DeploymentDocument(nodes=result, standby=standby,
                               addresses=frozenset(seen))


def _address(r: Report, path: Path, value: Any) -> Optional[str]:
    address, why = normalise_node_address(value)
    if why is not None:
        r.error(path, why)
    return address


def _parse_standby(r: Report, value: Any) -> _Entries:
    """``standby: {APP: [NODE, ...]}``, each node in the form ``nodes`` uses."""
    if value is None:
        return []
    if not isinstance(value, dict):
        r.error(("standby",), "expected a mapping of application names to lists "
                              "of standby nodes, got %s" % (describe(value),))
        return []
    result: _Entries = []
    for name, nodes in value.items():
        path: Path = ("standby", name)
        if valid_name(r, path, name) is None:
            continue
        if not isinstance(nodes, list):
            r.error(path, "expected a list of node addresses (use [] for none), "
                          "got %s" % (describe(nodes),))
            continue
        entries: List[Tuple[str, Path]] = []
        seen: Dict[str, Path] = {}
        for i, node in enumerate(nodes):
            address = _address(r, path + (i,), node)
            if address is None:
                continue
            if address in seen:
                r.error(path + (i,), "node %s is listed twice (also as %s)"
                        % (address, format_path(seen[address])))
                continue
            seen[address] = path + (i,)
            entries.append((address, path + (i,)))
        result.append((name, path, entries))
    return result


# --- both files ------------------------------------------------------------------

def configuration_from_documents(
        deployment: Optional[bytes], application: Optional[bytes],
        deployment_file: str = "deployment", application_file: str = "application",
        problems: Sequence[Problem] = (),
) -> Deployment:
    """
    The ``Deployment`` two configuration documents describe, or
    ``ConfigurationError`` listing every problem in both (after any
    ``problems`` already found, such as a file that could not be read, whose
    document is then None).
    """
    dr, ar = Report(deployment_file), Report(application_file)
    return _validate(dr, ar, read_document(dr, deployment),
                     read_document(ar, application), application_file, problems)


def configuration_from_objects(
        deployment: Any, application: Any,
        deployment_file: str = "deployment", application_file: str = "application",
) -> Deployment:
    """
    Like ``configuration_from_documents`` for documents already parsed
    (JSON received by a node): the same rules, the same errors.
    """
    return _validate(Report(deployment_file), Report(application_file),
                     deployment, application, application_file, ())


def _validate(dr: Report, ar: Report, dep_doc, app_doc, application_file: str,
              problems: Sequence[Problem]) -> Deployment:
    parsed = parse_applications(ar, app_doc) if app_doc is not None else None
    placement = _parse_deployment(dr, dep_doc) if dep_doc is not None else None
    deployment_model = None
    if placement is not None:
        deployment_model = _cross_check(dr, ar, placement, parsed, application_file)
    problems = list(problems) + dr.problems + ar.problems
    if problems or deployment_model is None:
        raise ConfigurationError(problems or [
            Problem(dr.filename, "", "no deployment could be read")])
    return deployment_model


def _not_defined(r: Report, name: str, defined: List[str],
                 application_file: str) -> str:
    hint = r.hint(name, defined)
    return "application %s is not defined in %s%s" % (
        json.dumps(name), application_file,
        " (did you mean %s?)" % (json.dumps(hint),) if hint else "")


def _cross_check(dr: Report, ar: Report, placement: _DeploymentDocument,
                 parsed: Optional[ParsedApplications],
                 application_file: str) -> Deployment:
    placed: Dict[str, Path] = {}
    home: Dict[str, str] = {}
    result = []
    # The names a misspelt reference may have meant, listed once.
    defined = sorted(set(parsed.applications) | parsed.invalid) if parsed else []
    for address, path, entries in placement.nodes:
        apps = []
        for name, entry_path in entries:
            if name in placed:
                r_where = format_path(placed[name])
                dr.error(entry_path, "application %s is already placed at %s; an "
                         "application runs on at most one node" % (name, r_where))
                continue
            placed[name] = entry_path
            home[name] = address
            if parsed is None or name in parsed.invalid:
                continue
            app = parsed.applications.get(name)
            if app is None:
                dr.error(entry_path, _not_defined(dr, name, defined, application_file))
                continue
            apps.append(app)
        result.append(Node(hostname=address, applications=apps))
    if parsed is not None:
        users: Dict[int, str] = {}
        for name in sorted(placed, key=lambda n: placed[n]):
            app = parsed.applications.get(name)
            if app is None:
                continue
            for port in sorted(app.ports):
                other = users.get(port.external_port)
                if other is not None:
                    ar.error(parsed.port_paths[(name, port.external_port)],
                             "external port %d is also used by application %s (%s); "
                             "every node forwards an external port to one application"
                             % (port.external_port, other, format_path(
                                 parsed.port_paths[(other, port.external_port)])))
                else:
                    users[port.external_port] = name
    standby = _check_standby(dr, placement, home, parsed, defined, application_file)
    return Deployment(nodes=result, standby=standby)


def _check_standby(dr: Report, placement: _DeploymentDocument, home: Dict[str, str],
                   parsed: Optional[ParsedApplications], defined: List[str],
                   application_file: str) -> Dict[str, List[str]]:
    """Each standby names a placed application with a volume, and other nodes
    of the deployment."""
    addresses = placement.addresses
    standby = {}
    for name, path, entries in placement.standby:
        if (parsed is not None and name not in parsed.invalid
                and name not in parsed.applications):
            dr.error(path, _not_defined(dr, name, defined, application_file))
        elif entries:  # an empty list asks for nothing to be replicated
            if name not in home:
                dr.error(path, "application %s runs on no node; only an application "
                               "placed under nodes can have standbys" % (name,))
            app = parsed.applications.get(name) if parsed is not None else None
            if app is not None and app.volume is None:
                dr.error(path, "application %s has no volume to replicate" % (name,))
        for address, entry_path in entries:
            if address not in addresses:
                hint = dr.hint(address, addresses)
                dr.error(entry_path, "node %s is not one of the nodes of this "
                         "deployment%s; a standby must be a key of nodes"
                         % (address, " (did you mean %s?)" % (hint,) if hint else ""))
            elif address == home.get(name):
                dr.error(entry_path, "node %s is where application %s runs; a "
                         "standby must be another node" % (address, name))
        standby[name] = [address for address, _ in entries]
    return standby


def load_configuration(deployment_path: str, application_path: str) -> Deployment:
    """Read and validate both files; ``ConfigurationError`` lists every
    problem."""
    dep, dep_problem = read_file(deployment_path)
    app, app_problem = read_file(application_path)
    return configuration_from_documents(
        dep, app, deployment_path, application_path,
        [p for p in (dep_problem, app_problem) if p is not None])


def application_names(deployment: Deployment) -> List[str]:
    return sorted(app.name for _, app in deployment.applications())
