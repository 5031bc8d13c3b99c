"""coderd's storage: one interface (``base.Store``), SQLite and PostgreSQL backends."""
