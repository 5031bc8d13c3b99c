"""burrow: remote development workspaces over an end-to-end encrypted DERP tunnel."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # Lazy: reading distribution metadata costs milliseconds that `burrow ssh
    # --stdio` (a fresh process on every OpenSSH connect) should not pay.
    if name == "__version__":
        from sdk.version import VERSION

        return VERSION
    raise AttributeError(f"module 'burrow' has no attribute {name!r}")
