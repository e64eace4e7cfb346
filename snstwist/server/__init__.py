"""
One server process of a VM: its services, sessions and replication.
"""
