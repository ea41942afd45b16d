"""Mercato auth service."""
