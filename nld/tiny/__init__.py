"""The built-in tiny NLD model: its corpus, tokenizer, training recipe and packaging."""
