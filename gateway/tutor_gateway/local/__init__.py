"""The gateway's local mode (the embedded default): a SQLite session store, engine processes."""
