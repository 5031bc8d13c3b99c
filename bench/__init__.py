"""burrow's bench package."""
