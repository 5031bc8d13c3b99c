"""burrow's tunnel package."""
