"""burrow's relay package."""
