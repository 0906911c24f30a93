"""Tests of the AI assistant: prompts, providers, and a fake OpenAI-compatible server."""
