"""The embedded MLX backend: `backend` (the Backend), `engine` (the thread that owns mlx),
`cache` (prompt cache), `messages` (the request as chat-template messages), `prompt`
(chat-template rendering), `output` (text to events), `structured` (constrained decoding).
Imported only when an mlx backend is configured, except `options` (its config keys, no mlx),
which every config load reads."""
