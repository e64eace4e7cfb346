"""
Test beds: several hosts on one machine, a latency proxy, the chaos run.
"""
