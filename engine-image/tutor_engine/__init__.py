"""Per-tutor engine server: one process (or pod) serves every session of one tutor."""
