"""Client-side access to a workspace: from a workspace name to a tunnel stream.

Modules:

- ``connect``: :func:`connect` -- look up the workspace's agent, join the
  coordinator as a client, learn the agent's node, run the peer layer's
  connection (``peer.conn``) on the agent's home relay; streams by service
  name (:func:`workspace_stream` for a single stream).
- ``splice``: two copy loops with half-close and backpressure.
- ``progress``: the "waiting for the agent" spinner on stderr.
- ``speedtest_proto`` / ``speedtest``: the ``speedtest`` service's wire
  format (sans-IO) and its client and reference server.
- ``options``: the flags the access commands share.

The coordination messages, relay map, latency probes and the coordinator
client live in the peer layer (``peer/``), shared with the agent.
"""
