"""What tests/ and bench/ share: `net` (free ports, waiting for a server to answer), `poll` (waiting
for a condition) and `sse` (reading the Anthropic SSE stream the gateway writes)."""
