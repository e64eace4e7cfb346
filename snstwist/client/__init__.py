"""
The client library: one logged-in user of a cluster.
"""
