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


V3_STUDIES = (  # the tables of version 3, made by _v3
    """CREATE TABLE studies (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        instructions TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('generating', 'ready', 'cancelled', 'failed')),
        all_pairs INTEGER NOT NULL,
        pairs_per_rater INTEGER NOT NULL,
        attention_every INTEGER NOT NULL,
        cloud_model TEXT,
        local_model TEXT,
        problem TEXT,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE study_settings (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
        label TEXT NOT NULL,
        baseline INTEGER NOT NULL,
        config TEXT NOT NULL,
        UNIQUE (study_id, label))""",
    """CREATE TABLE study_items (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
        persona TEXT NOT NULL,
        prompt TEXT NOT NULL,
        card TEXT NOT NULL)""",
    """CREATE TABLE study_answers (
        id INTEGER PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES study_items(id) ON DELETE CASCADE,
        setting_id INTEGER NOT NULL REFERENCES study_settings(id) ON DELETE CASCADE,
        text TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (item_id, setting_id))""",
    """CREATE TABLE study_pairs (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
        item_id INTEGER NOT NULL REFERENCES study_items(id) ON DELETE CASCADE,
        setting_a INTEGER NOT NULL REFERENCES study_settings(id),
        setting_b INTEGER NOT NULL REFERENCES study_settings(id),
        UNIQUE (item_id, setting_a, setting_b))""",
    """CREATE TABLE study_raters (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE study_issues (
        id INTEGER PRIMARY KEY,
        rater_id INTEGER NOT NULL REFERENCES study_raters(id) ON DELETE CASCADE,
        pair_id INTEGER NOT NULL REFERENCES study_pairs(id) ON DELETE CASCADE,
        left_setting INTEGER NOT NULL REFERENCES study_settings(id),
        attention_of INTEGER REFERENCES study_issues(id),
        issued_at TEXT NOT NULL)""",
    "CREATE INDEX study_issues_rater ON study_issues(rater_id)",
    "CREATE INDEX study_issues_pair ON study_issues(pair_id)",
    """CREATE TABLE study_votes (
        id INTEGER PRIMARY KEY,
        issue_id INTEGER NOT NULL UNIQUE REFERENCES study_issues(id) ON DELETE CASCADE,
        choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both_bad')),
        created_at TEXT NOT NULL)""",
)


def _v3(db: sqlite_utils.Database):
    """Rating studies: personas x prompts x settings, answers generated ahead, pairs issued to
    raters one at a time, at most one vote per issued pair (the UNIQUE makes a replay fail)."""
    for sql in V3_STUDIES:
        db.execute(sql)


def _v4(db: sqlite_utils.Database):
    """The privacy deny-list: an entry marked sensitive never makes its words likelier."""
    db["entries"].add_column("sensitive", int, not_null_default=0)


def _v5(db: sqlite_utils.Database):
    """An entry's version, raised by every edit: a save made from an older version (another tab's
    edit came first) is refused by the UPDATE itself, not lost."""
    db["entries"].add_column("version", int, not_null_default=1)


def _v6(db: sqlite_utils.Database):
    """Each entry's vector for retrieval by meaning (user_store/embeddings.py), beside its row;
    `model` names the embedding model, so vectors from another one are recomputed, not mixed.
    Entries from before this step get theirs the first time their user's context is built."""
    db.execute("""CREATE TABLE entry_vectors (
        entry_id INTEGER PRIMARY KEY REFERENCES entries(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        vector BLOB NOT NULL)""")


def _v7(db: sqlite_utils.Database):
    """The organizer's desk. A study keeps its raters blind: which setting made which answer is
    revealed after their last vote ("end") or never ("never"), as the organizer chose. A rater's
    link can be revoked, and is kept so the organizer can copy it again after a reload (the file
    is the owner's and holds more private things than these links; raters are still looked up
    by the token's hash). Links made before this step were not kept: their `token` is NULL."""
    db["studies"].add_column("reveal", str, not_null_default="end")
    db["study_raters"].add_column("token", str)
    db["study_raters"].add_column("revoked_at", str)
    # consent before the first pair, a completion code at the end (Prolific's ids kept with the
    # rater), a comment with a vote, and a skip that is not a vote
    db["studies"].add_column("consent", str)
    db["studies"].add_column("overlap", int, not_null_default=0)  # raters per pair at most (0: no cap)
    db["studies"].add_column("completion_code", str)
    db["study_raters"].add_column("consented_at", str)
    db["study_raters"].add_column("external", str)
    db["study_votes"].add_column("comment", str)
    # a silent attention check: the setting's answer for this rater's persona against the same
    # setting's answer to the same request for another persona (decoy_item); decoy_left: the
    # answer that fits the card is shown as A
    db["study_issues"].add_column("decoy_item", int)
    db["study_issues"].add_column("decoy_left", int)
    db.execute("""CREATE TABLE study_skips (
        issue_id INTEGER PRIMARY KEY REFERENCES study_issues(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL)""")


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5, _v6, _v7]
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
