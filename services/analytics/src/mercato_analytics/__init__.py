"""Mercato analytics service: exactly-once event aggregates served over gRPC."""
