"""coderd: the thin control plane (API, auth, storage, builds, job queue)."""
