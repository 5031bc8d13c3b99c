"""The one error of the coordination codec (sans-IO: no trio here)."""

from __future__ import annotations


class MessageError(Exception):
    """A coordination message or relay map is malformed, or the coordinator
    reported an error.  The message is one line, fit to send back to a peer
    (coderd does) or to show a user."""
