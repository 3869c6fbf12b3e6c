"""The device-side personal history store (SQLite through sqlite-utils)."""
from .store import KINDS, VOTES, StoreError, UnknownEntry, UnknownUser, UserStore, default_db_path

__all__ = ["UserStore", "StoreError", "UnknownUser", "UnknownEntry", "KINDS", "VOTES", "default_db_path"]
