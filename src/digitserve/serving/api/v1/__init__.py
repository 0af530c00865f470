"""The /v1 JSON API: predictions, models, the registry pages' JSON, feedback and admin routes."""
