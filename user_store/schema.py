"""Schema migrations, applied in order on open. Never edit a shipped step: add a new one."""
from __future__ import annotations

import sqlite_utils


def _v1(db: sqlite_utils.Database):
    db.execute("""CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL)""")
    db.execute("""CREATE TABLE entries (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        title TEXT,
        text TEXT NOT NULL,
        pinned INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""")
    db.execute("CREATE INDEX entries_user ON entries(user_id)")
    # trigram: finds a Japanese word inside a sentence (no spaces to split on) and
    # English substrings alike; kept in sync with `entries` by triggers.
    db["entries"].enable_fts(["title", "text"], create_triggers=True, tokenize="trigram")


def _v2(db: sqlite_utils.Database):
    """Human ratings from the app's blind A/B mode."""
    db.execute("""CREATE TABLE votes (
        id INTEGER PRIMARY KEY,
        rater TEXT NOT NULL,
        user TEXT NOT NULL,
        conversation TEXT NOT NULL,
        answer_a TEXT NOT NULL,
        answer_b TEXT NOT NULL,
        steered_side TEXT NOT NULL CHECK (steered_side IN ('A', 'B')),
        vote TEXT NOT NULL CHECK (vote IN ('A', 'B', 'tie', 'both_bad')),
        params TEXT NOT NULL,
        cloud_model TEXT,
        local_model TEXT,
        created_at TEXT NOT NULL)""")


MIGRATIONS = [_v1, _v2]
LATEST = len(MIGRATIONS)


def current_version(db: sqlite_utils.Database) -> int:
    if not db["schema_version"].exists():
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return row[0] if row else 0


def migrate(db: sqlite_utils.Database, target: int = LATEST):
    """Bring the schema up to `target`, one transaction per step."""
    version = current_version(db)
    if version > LATEST:
        raise ValueError(f"database schema version {version} is newer than this program ({LATEST}); upgrade CoSteer Studio")
    for step in range(version, target):
        with db.atomic():
            if step == 0:
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            MIGRATIONS[step](db)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", [step + 1])
