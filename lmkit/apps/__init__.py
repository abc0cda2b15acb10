"""Applications of language models, one module per task (Part V of the book).

classification and sentiment (chapter 18), translation (19), code generation (20), music (21),
image captioning (22), retrieval, summarization and chat (23); ``hub`` and ``hub_media`` hold the
opt-in hub alternatives of chapters 18-22.
"""
