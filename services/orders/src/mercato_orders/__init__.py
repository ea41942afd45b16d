"""Mercato orders service."""
