"""Placeholder: the smtp listener is being built (see the open issue)."""
from __future__ import annotations


async def start(app, name, role, listener, sock):  # noqa: ANN001
    raise NotImplementedError("smtp is not implemented yet")
