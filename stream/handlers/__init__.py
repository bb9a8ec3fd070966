"""HTTP handlers: thin, they parse, authorize and call the pipelines."""
