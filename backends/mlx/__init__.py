"""The embedded MLX backend: `backend` (the Backend), `engine` (the thread that owns mlx),
`cache` (prompt cache), `prompt` (chat-template rendering), `output` (text to events),
`structured` (constrained decoding). Imported only when an mlx backend is configured."""
