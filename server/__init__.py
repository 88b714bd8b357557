"""Casella's servers: everything that listens on a socket or runs the daemon.

Nothing here imports SQLAlchemy: protocols reach the store only through
`storage.MailStore` (enforced by tests/test_layering.py).
"""
