"""The device-side personal history store (SQLite through sqlite-utils), and rating studies in the same file."""
from .checks import VOTES
from .database import StoreError, default_db_path
from .store import KINDS, NoUserName, StaleEntry, UnknownEntry, UnknownUser, UserStore, read_import
from .studies import AlreadyVoted, BadLink, NotIssued, StudyStore, UnknownStudy

__all__ = ["UserStore", "StudyStore", "StoreError", "NoUserName", "UnknownUser", "UnknownEntry", "StaleEntry", "KINDS",
           "VOTES", "default_db_path", "read_import", "AlreadyVoted", "BadLink", "NotIssued", "UnknownStudy"]
