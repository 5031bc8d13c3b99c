"""Client-side access to a workspace: from a workspace name to a tunnel stream.

Modules:

- ``coordination``: sans-IO messages of coderd's coordinator WebSocket (our
  node out; welcome, peer, peer_gone, error in), and the relay map.
- ``connect``: :func:`connect` -- look up the workspace's agent, join the
  coordinator as a client, learn the agent's node, run a tunnel ``Endpoint``
  over a ``DerpClient`` to the agent's home relay; streams by service name
  (:func:`workspace_stream` for a single stream).
- ``splice``: two copy loops with half-close and backpressure.
- ``progress``: the "waiting for the agent" spinner on stderr.
- ``netcheck``: latency probes of each relay region.
- ``speedtest_proto`` / ``speedtest``: the ``speedtest`` service's wire
  format (sans-IO) and its client and reference server.
- ``options``: the flags the access commands share.
"""
