"""DERP relay protocol (Tailscale DERP v2, byte-compatible): codec, handshake,
server core, client connection, mesh.  Imports nothing else of the project."""
