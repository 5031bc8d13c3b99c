"""burrow's SDK: what every client of coderd shares with coderd itself.

- :mod:`sdk.http`: the one bounded HTTP/1.1 request (h11 over trio, TLS with
  an optional CA bundle), the transport of every client;
- :mod:`sdk.types`: the API's values as frozen dataclasses (one strict
  ``to_json``/``from_json`` and a JSON Schema, from the fields), written by
  coderd's routes and parsed by the clients; also the provisioner job
  input/result (:mod:`sdk.types.jobs`);
- :mod:`sdk.errors`: the two ways a call fails, :class:`~sdk.errors.ApiError`
  and :class:`~sdk.errors.Unreachable`;
- the clients: :mod:`sdk.client` (users: the CLI), :mod:`sdk.agent`
  (workspace agents), :mod:`sdk.provisioner` (daemons' endpoint and TLS),
  :mod:`sdk.relay` (latency probes; relay registration goes here next), all
  over :mod:`sdk.transport`.

It imports nothing of the project, so the agent, provisionerd, the CLI and
regional relays can all sit above it; coderd uses its types, never its clients.
"""
