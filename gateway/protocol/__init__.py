"""The protocol core: Anthropic request/response types, the internal event stream, errors, the
Backend interface and token estimates. The web layer (gateway/) and every backend (backends/)
build on it; it imports neither (tests/test_layout.py checks the rule)."""
