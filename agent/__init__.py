"""burrow's agent package."""
