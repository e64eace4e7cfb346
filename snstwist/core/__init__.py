"""
Values, errors and rules of the domain, and the small runtime pieces every process shares.
"""
