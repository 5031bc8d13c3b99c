"""burrow's coderd package."""
