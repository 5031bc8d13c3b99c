"""burrow: remote development workspaces over an end-to-end encrypted DERP tunnel."""

__version__ = "0.1.0"
