"""Observability: Prometheus metrics, progress display and run reports."""
