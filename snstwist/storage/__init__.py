"""
Durable storage of one VM: SQLite and the post files.
"""
