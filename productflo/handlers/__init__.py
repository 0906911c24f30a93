"""Handlers: consumers of the log that answer events with new events (mentions, AI requests)."""
