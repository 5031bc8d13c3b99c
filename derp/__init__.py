"""burrow's derp package."""
