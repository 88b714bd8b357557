"""Casella's mailbox store: the only package that knows SQL.

Protocols use `MailStore` (api.py) and the value types in types.py.
"""
from .api import DeliveryReport, FetchedMessage, MailStore, Pop3Listing  # noqa: F401
from .changes import ChangeBus  # noqa: F401
from .errors import *  # noqa: F401,F403
from .types import *  # noqa: F401,F403
