"""Models: resolve and load base models, generate with confidence, embed text."""
