"""The OpenAI-compatible server: many adapters on one base, batched across adapters, every
answer captured as a production record. `create_app(project, settings)` builds the app."""
