"""
The cluster: what the nodes of one tokengate deployment share (docs/cluster.md).
"""
