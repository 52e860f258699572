"""flocker_async: deploy Docker applications with their ZFS volumes on a
cluster of nodes, and move them, data included, from node to node."""

__version__ = "0.1.0"
