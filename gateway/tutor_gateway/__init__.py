"""The gateway: the seed's REST and WebSocket API in front of per-tutor engines."""
