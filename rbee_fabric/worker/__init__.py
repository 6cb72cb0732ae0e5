"""llm-worker-rbee: one GGUF model behind an HTTP API, one generation at a time."""
