"""
flocker-lab: a local cluster of nodes on one machine (network namespaces,
one dockerd each), and the offline images it runs.
"""
