"""The peer layer: what Coder keeps in ``tailnet/``.

Everything a tunnel peer (a workspace agent, the CLI, later regional relays
and the app proxy) needs to find another peer through coderd's coordinator
and reach it:

- :mod:`peer.messages`: the coordination messages as typed sans-IO values,
  with the one parser/validator and the one encoder (coderd uses it too);
- :mod:`peer.relaymap`: the relay map (regions, their nodes, health);
- :mod:`peer.homing`: home-region choice with hysteresis (sans-IO);
- :mod:`peer.latency`: the relay latency probe, all regions at once;
- :mod:`peer.wsclient`: the small wsproto WebSocket client;
- :mod:`peer.coordclient`: the coordinator client loop with backoff;
- :mod:`peer.conn`: the connection assembly (tunnel endpoint + DERP client +
  coordinator + re-homing).

It imports ``tunnel``, ``derp`` and ``sdk`` only: nothing here knows about
users, workspaces or databases.
"""
