"""The device-side personal history store (SQLite through sqlite-utils)."""
from .studies import AlreadyVoted, BadLink, NotIssued, UnknownStudy
from .store import (KINDS, VOTES, NoUserName, StaleEntry, StoreError, UnknownEntry, UnknownUser, UserStore,
                    default_db_path)

__all__ = ["UserStore", "StoreError", "NoUserName", "UnknownUser", "UnknownEntry", "StaleEntry", "KINDS", "VOTES", "default_db_path",
           "AlreadyVoted", "BadLink", "NotIssued", "UnknownStudy"]
