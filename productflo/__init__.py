"""ProductFlo realtime server: an event-sourced WebSocket backend on PostgreSQL."""

__version__ = "0.1.0"
