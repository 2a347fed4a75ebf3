"""Real inference servers for the real-server test tier: how to build, convert for and start them."""
