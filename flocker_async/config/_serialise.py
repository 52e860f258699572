"""
Model -> documents: what flocker-deploy sends to the nodes, and what the
round-trip tests parse back.  Parsing a document written here gives the
same model.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable

import yaml

from ..model import Application, Deployment


def _seconds(value: float):
    """Whole seconds as an integer, so the file reads ``60`` not ``60.0``."""
    return int(value) if float(value).is_integer() else value


def _application_to_document(app: Application) -> dict:
    doc: Dict[str, Any] = {"image": app.image.full_name}
    if app.environment:
        doc["environment"] = dict(app.environment)
    if app.ports:
        doc["ports"] = [{"internal": p.internal_port, "external": p.external_port}
                        for p in sorted(app.ports)]
    if app.links:
        doc["links"] = [{"local_port": l.local_port, "remote_port": l.remote_port,
                         "alias": l.alias} for l in sorted(app.links)]
    if app.volume is not None:
        volume: Dict[str, Any] = {"mountpoint": app.volume.mountpoint}
        if app.volume.maximum_size is not None:
            volume["maximum_size"] = app.volume.maximum_size
        if app.volume.replication_interval is not None:
            volume["replication_interval"] = _seconds(app.volume.replication_interval)
        doc["volume"] = volume
    if app.mem_limit is not None:
        doc["mem_limit"] = app.mem_limit
    if app.cpu_shares is not None:
        doc["cpu_shares"] = app.cpu_shares
    if app.restart_policy.name != "never":
        policy: Dict[str, Any] = {"name": app.restart_policy.name}
        if app.restart_policy.maximum_retry_count is not None:
            policy["maximum_retry_count"] = app.restart_policy.maximum_retry_count
        doc["restart_policy"] = policy
    return doc


def applications_to_document(applications: Iterable[Application]) -> dict:
    """The version-1 application document for ``applications``."""
    return {"version": 1, "applications": {
        app.name: _application_to_document(app)
        for app in sorted(applications, key=lambda a: a.name)}}


def deployment_to_document(deployment: Deployment) -> dict:
    """The version-1 deployment document for ``deployment``."""
    document: Dict[str, Any] = {"version": 1, "nodes": {
        node.hostname: sorted(app.name for app in node.applications)
        for node in sorted(deployment.nodes, key=lambda n: n.hostname)}}
    if deployment.standby:
        document["standby"] = {name: list(nodes) for name, nodes in deployment.standby}
    return document


def dump_yaml(document: dict) -> bytes:
    # Non-ASCII is escaped: raw NEL or LS characters would be read back as line breaks.
    return yaml.safe_dump(document, sort_keys=True, allow_unicode=False).encode("ascii")
