"""burrow's provisionerd package."""
