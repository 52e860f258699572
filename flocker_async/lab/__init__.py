"""
flocker-lab: a local cluster of nodes on one machine (network namespaces,
one dockerd and one zfs-fuse pool each, a flocker-node daemon per node),
and the offline images it runs.

    lab = Lab.up(nodes=2)          # or Lab().up(...); blocking
    for node in lab.nodes: print(node.name, node.address)
    lab.exec("n1", ["docker", "ps"])
    lab.kill_daemon("n1"); lab.start_daemon("n1")
    lab.power_off("n1"); lab.power_on("n1")   # pull the plug, boot again
    lab.partition("n1"); lab.heal("n1")       # link down / up, all running
    lab.down()
"""

from ._lab import (
    LAB_DIR, MAX_NODES, SSH_PORT, DaemonStartError, Lab, LabNames, LabNode,
    NodePoweredOff, NodeStatus, env_for, export_lines, parse_node_name,
)
from ._network import choose_subnet, parse_routes
from ._system import CommandError, LabError

__all__ = [
    "Lab", "LabNames", "LabNode", "NodeStatus", "LabError", "CommandError",
    "DaemonStartError", "NodePoweredOff", "LAB_DIR", "SSH_PORT", "MAX_NODES", "env_for",
    "export_lines", "parse_node_name", "choose_subnet", "parse_routes",
]
