"""JSON Schemas shipped with the package as `reconciler.schemas` (see pyproject.toml)."""
