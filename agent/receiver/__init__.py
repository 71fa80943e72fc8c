"""The central endpoint: escalation ingest, storage on SQLite, and a first page."""
