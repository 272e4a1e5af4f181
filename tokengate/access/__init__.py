"""
The one door: what every protocol's admission has in common.
"""
