"""Benchmarks that run on the test harness (tests/support): a fake cluster, a real redis-server."""
