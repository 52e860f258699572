"""
The flocker-node service: SSH listener, convergence loop, sd_notify.

This is the seam between ``tap.makeService`` (configuration loaded and
validated) and the daemon itself, which is not wired yet.
"""

from __future__ import annotations

from twisted.application.service import IService

from ._config import NodeConfiguration

__all__ = ["make_node_service"]


def make_node_service(configuration: NodeConfiguration) -> IService:
    """The daemon's root service for ``configuration``."""
    raise NotImplementedError("convergence service not wired yet")
