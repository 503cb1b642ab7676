"""SQLAlchemy record store: runs and findings (SQLite by default, PostgreSQL by URL)."""

from bastion.store.db import Base, default_url, make_engine, session_factory

__all__ = ["Base", "default_url", "make_engine", "session_factory"]
