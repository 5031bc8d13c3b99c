"""coderd's HTTP/JSON API under /api/v2: one small module per resource."""
