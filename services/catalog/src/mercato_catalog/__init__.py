"""Mercato catalog service: products, categories, search, per-order stock reservations."""
