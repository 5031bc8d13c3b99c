"""burrow's web layer: the HTTP/1.1 front door (h11), routing, responses,
upgrades, listeners and TLS.  The relay and coderd mount their routes on it;
it imports nothing of the project."""
