"""
The programs users and operators type, and the twistd plugins' options.
"""
