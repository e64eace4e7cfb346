"""
Buddies: the master and the slave of one VM, which resurrect each other.
"""
