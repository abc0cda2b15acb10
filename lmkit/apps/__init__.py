"""Applications of language models: classification (chapter 18), translation (chapter 19), code generation (chapter 20)."""
