"""burrow's SDK: what every client of coderd shares with coderd itself.

The one bounded HTTP/1.1 request helper (:mod:`sdk.http`), and the typed API
values and clients built on it.  It imports nothing of the project, so the
agent, provisionerd, the CLI and regional relays can all sit above it.
"""
