"""Shared plumbing for mercato services."""
