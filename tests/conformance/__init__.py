"""The MCP conformance fixture server and its runners (see docs/conformance.md)."""
