"""Rating studies in the same SQLite file: the design, the answers generated ahead, the pairs
issued to raters and their votes.

The rules that keep votes honest live in the schema and in one transaction each: a rater link is
a random token of which only the SHA-256 is stored; a vote names an issued pair and is accepted
only from the link it was issued to, once (UNIQUE(issue_id)); issuing the next pair reads the
counts and writes the issue in one `BEGIN IMMEDIATE`, so twelve raters asking at once cannot be
given the same slot twice. Plain data in and out: this package imports nothing of the app's.
"""
from __future__ import annotations

import hashlib
import json
import random
import secrets
import statistics
from datetime import datetime

from .schedule import Candidate, attention_due, checks_in, choose, swapped
from .checks import VOTES
from .database import Database, StoreError, check_text, utc_now

STATUSES = ("generating", "ready", "cancelled", "failed")
TOKEN_BYTES = 16


class UnknownStudy(StoreError):
    pass


class BadLink(StoreError):
    """A rater token that is not one of this study's."""


class NotIssued(StoreError):
    pass


class AlreadyVoted(StoreError):
    pass


def seconds_between(start: str, end: str) -> float:
    """Seconds between two of utc_now()'s ISO timestamps."""
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class StudyStore:
    def __init__(self, store: Database):
        self.store = store

    def _query(self, sql: str, args=()) -> list[dict]:
        with self.store.lock:
            return list(self.store.db.query(sql, args))

    # -- design ---------------------------------------------------------------------
    def create(self, name: str, instructions: str, items: list[dict], settings: list[dict],
               pairs: list[tuple[int, int]], *, all_pairs: bool, pairs_per_rater: int, attention_every: int,
               cloud_model: str | None = None, local_model: str | None = None, reveal: str = "end",
               consent: str | None = None, completion_code: str | None = None, overlap: int = 0) -> int:
        """items: {persona, prompt, card}; settings: {label, baseline, config}, the baseline first;
        pairs: indices into settings, formed for every item. All or nothing."""
        for field, value in (("name", name), ("instructions", instructions)):
            check_text(value, field)
        with self.store.write() as db:
            sid = db["studies"].insert({
                "name": name, "instructions": instructions, "status": "generating", "all_pairs": int(all_pairs),
                "pairs_per_rater": pairs_per_rater, "attention_every": attention_every, "cloud_model": cloud_model,
                "local_model": local_model, "problem": None, "created_at": utc_now(), "reveal": reveal,
                "consent": consent, "completion_code": completion_code, "overlap": overlap}).last_pk
            setting_ids = [db["study_settings"].insert({"study_id": sid, "label": s["label"], "baseline": int(s["baseline"]),
                                                        "config": json.dumps(s["config"], sort_keys=True)}).last_pk
                           for s in settings]
            for item in items:
                iid = db["study_items"].insert({"study_id": sid, **{k: item[k] for k in ("persona", "prompt", "card")}}).last_pk
                db["study_pairs"].insert_all([{"study_id": sid, "item_id": iid, "setting_a": setting_ids[a],
                                               "setting_b": setting_ids[b]} for a, b in pairs])
        return sid

    def add_raters(self, study_id: int, names: list[str]) -> list[dict]:
        """New rater links. The token is kept for the organizer's desk (schema _v7 says why); a
        rater is found by its hash."""
        self.study(study_id)
        out = []
        with self.store.write() as db:
            for name in names:
                check_text(name, "rater name")
                token = secrets.token_urlsafe(TOKEN_BYTES)
                rid = db["study_raters"].insert({"study_id": study_id, "name": name, "token_hash": token_hash(token),
                                                 "token": token, "created_at": utc_now()}).last_pk
                out.append({"rater": rid, "name": name, "token": token})
        return out

    def study(self, study_id: int) -> dict:
        rows = self.store.rows("studies", "id = ?", [study_id]) if isinstance(study_id, int) else []
        if not rows:
            raise UnknownStudy(f"unknown study {study_id!r}")
        return rows[0]

    def studies(self) -> list[dict]:
        return self.store.rows("studies", order_by="id DESC")

    def settings(self, study_id: int) -> list[dict]:
        rows = self.store.rows("study_settings", "study_id = ?", [study_id], order_by="id")
        for r in rows:
            r["config"] = json.loads(r["config"])
        return rows

    def raters(self, study_id: int) -> list[dict]:
        return self.store.rows("study_raters", "study_id = ?", [study_id], select="id, name, created_at", order_by="id")

    def set_status(self, study_id: int, status: str, problem: str | None = None):
        assert status in STATUSES
        with self.store.write() as db:
            db["studies"].update(study_id, {"status": status, "problem": problem})

    # -- answers --------------------------------------------------------------------
    def pending(self, study_id: int) -> list[dict]:
        """(item, setting) combinations without an answer yet, item by item."""
        return self._query(
            """SELECT i.id AS item_id, i.persona, i.prompt, s.id AS setting_id FROM study_items i
               JOIN study_settings s ON s.study_id = i.study_id
               LEFT JOIN study_answers a ON a.item_id = i.id AND a.setting_id = s.id
               WHERE i.study_id = ? AND a.id IS NULL ORDER BY i.id, s.id""", [study_id])

    def add_answer(self, item_id: int, setting_id: int, text: str, tokens: int):
        check_text(text, "answer")
        with self.store.write() as db:
            db["study_answers"].insert({"item_id": item_id, "setting_id": setting_id, "text": text, "tokens": tokens,
                                        "created_at": utc_now()}, ignore=True)  # a resumed run may redo one

    def progress(self, study_id: int) -> dict:
        study = self.study(study_id)
        (row,) = self._query(
            """SELECT (SELECT count(*) FROM study_items WHERE study_id = :s) *
                      (SELECT count(*) FROM study_settings WHERE study_id = :s) AS total,
                      (SELECT count(*) FROM study_answers a JOIN study_items i ON i.id = a.item_id
                       WHERE i.study_id = :s) AS done,
                      (SELECT count(*) FROM study_votes v JOIN study_issues x ON x.id = v.issue_id
                       JOIN study_pairs p ON p.id = x.pair_id WHERE p.study_id = :s) AS votes""", {"s": study_id})
        return {"study": study_id, "name": study["name"], "status": study["status"], "problem": study["problem"],
                "answers_done": row["done"], "answers_total": row["total"], "votes": row["votes"]}

    # -- raters ---------------------------------------------------------------------
    def rater(self, study_id: int, token: str) -> dict:
        rows = self.store.rows("study_raters", "token_hash = ? AND study_id = ?", [token_hash(token), study_id])
        if not rows:
            raise BadLink("this rater link is not valid for this study (ask the study's owner for a new link)")
        if rows[0]["revoked_at"]:
            raise BadLink("this rater link was revoked by the study's organizer")
        return rows[0]

    def revoke(self, study_id: int, name: str) -> dict:
        """Revoke one rater's link by name: it is refused from now on; the votes it cast stay."""
        self.study(study_id)
        with self.store.write() as db:
            rows = self._query("SELECT id, revoked_at FROM study_raters WHERE study_id = ? AND name = ?",
                               [study_id, name])
            if not rows:
                raise BadLink(f"rater: study #{study_id} has no rater named {name!r}")
            if not rows[0]["revoked_at"]:
                db["study_raters"].update(rows[0]["id"], {"revoked_at": utc_now()})
        return {"study": study_id, "rater": name, "revoked": True}

    def desk(self, study_id: int) -> list[dict]:
        """Every rater of a study for the organizer: link, votes (first-time and checks), the
        median seconds from a pair being shown to its vote, when last seen, revoked or not."""
        self.study(study_id)
        raters = self._query("SELECT id, name, token, created_at, revoked_at FROM study_raters WHERE study_id = ? "
                             "ORDER BY id", [study_id])
        times = self._query(
            """SELECT x.rater_id, x.attention_of, x.issued_at, v.created_at FROM study_issues x
               JOIN study_raters r ON r.id = x.rater_id LEFT JOIN study_votes v ON v.issue_id = x.id
               WHERE r.study_id = ?""", [study_id])
        by_rater: dict[int, list[dict]] = {}
        for t in times:  # one pass: the desk refreshes while votes arrive
            by_rater.setdefault(t["rater_id"], []).append(t)
        out = []
        for r in raters:
            mine = by_rater.get(r["id"], [])
            voted = [t for t in mine if t["created_at"]]
            spent = [seconds_between(t["issued_at"], t["created_at"]) for t in voted]
            seen = [t["created_at"] or t["issued_at"] for t in mine]
            out.append({"name": r["name"], "token": r["token"], "votes": sum(t["attention_of"] is None for t in voted),
                        "checks": sum(t["attention_of"] is not None for t in voted),
                        "median_s_per_vote": round(statistics.median(spent), 1) if spent else None,
                        "last_seen": max(seen) if seen else None, "revoked": bool(r["revoked_at"])})
        return out

    def next_pair(self, rater: dict, rng: random.Random) -> dict:
        """The rater's open pair if they have one (a reload shows the same pair), else a new one.
        {"done": True} when they have rated their share; {"waiting": True} while answers are
        still being generated."""
        with self.store.write() as db:
            study = self.study(rater["study_id"])
            open_ = self._query("""SELECT x.id FROM study_issues x LEFT JOIN study_votes v ON v.issue_id = x.id
                                   LEFT JOIN study_skips k ON k.issue_id = x.id
                                   WHERE x.rater_id = ? AND v.id IS NULL AND k.issue_id IS NULL
                                   ORDER BY x.id LIMIT 1""", [rater["id"]])
            if open_:
                return self.issued(rater, open_[0]["id"])
            (mine,) = self._query("""SELECT count(*) FILTER (WHERE attention_of IS NULL) AS voted,
                                            count(*) FILTER (WHERE attention_of IS NOT NULL) AS checks
                                     FROM study_issues WHERE rater_id = ?
                                       AND id NOT IN (SELECT issue_id FROM study_skips)""", [rater["id"]])
            target = self.target(study)
            if attention_due(mine["voted"], mine["checks"], study["attention_every"]):
                decoy = self._decoy(db, rater, rng)
                if decoy:
                    return self.issued(rater, decoy)
                repeat = self._query(
                    """SELECT x.id, x.pair_id, x.left_setting, p.setting_a, p.setting_b FROM study_issues x
                       JOIN study_pairs p ON p.id = x.pair_id
                       WHERE x.rater_id = ? AND x.attention_of IS NULL AND x.id IN (SELECT issue_id FROM study_votes)
                         AND x.id NOT IN (SELECT attention_of FROM study_issues
                                          WHERE rater_id = ? AND attention_of IS NOT NULL)
                       ORDER BY x.id LIMIT 1""", [rater["id"], rater["id"]])
                if repeat:
                    r = repeat[0]
                    iid = db["study_issues"].insert({
                        "rater_id": rater["id"], "pair_id": r["pair_id"], "attention_of": r["id"],
                        "left_setting": swapped(r["left_setting"], r["setting_a"], r["setting_b"]),
                        "issued_at": utc_now()}).last_pk
                    return self.issued(rater, iid)
            if mine["voted"] >= target:
                return {"done": True, "rated": mine["voted"], "target": target}
            rows = self._query(
                """SELECT p.id AS pair_id, p.setting_a, p.setting_b,
                          count(x.id) AS issued, count(x.id) FILTER (WHERE x.left_setting = p.setting_a) AS a_left
                   FROM study_pairs p
                   JOIN study_answers aa ON aa.item_id = p.item_id AND aa.setting_id = p.setting_a
                   JOIN study_answers ab ON ab.item_id = p.item_id AND ab.setting_id = p.setting_b
                   LEFT JOIN study_issues x ON x.pair_id = p.id AND x.attention_of IS NULL
                   WHERE p.study_id = :s AND p.id NOT IN (SELECT pair_id FROM study_issues WHERE rater_id = :r)
                   GROUP BY p.id HAVING :cap = 0 OR count(x.id) < :cap""",  # overlap: raters per pair at most
                {"s": study["id"], "r": rater["id"], "cap": study["overlap"]})
            picked = choose([Candidate(**r) for r in rows], rng)
            if picked is None:
                if study["status"] == "generating":
                    return {"waiting": True, "rated": mine["voted"], "target": target}
                return {"done": True, "rated": mine["voted"], "target": target}
            pair, left = picked
            iid = db["study_issues"].insert({"rater_id": rater["id"], "pair_id": pair.pair_id, "left_setting": left,
                                             "attention_of": None, "issued_at": utc_now()}).last_pk
            return self.issued(rater, iid)

    def _decoy(self, db, rater: dict, rng: random.Random) -> int | None:
        """A silent attention check, issued: one of the rater's rated pairs' steered setting, its answer
        for the card's persona against its answer to the same request for another persona. Looks
        like any pair; the answer that fits the card should win. None when the study has no other
        persona with that request (then the check is a swapped repeat)."""
        rows = self._query(
            """SELECT x.id, x.pair_id, p.setting_b AS setting, i2.id AS decoy_item
               FROM study_issues x JOIN study_pairs p ON p.id = x.pair_id JOIN study_items i ON i.id = p.item_id
               JOIN study_items i2 ON i2.study_id = i.study_id AND i2.prompt = i.prompt AND i2.persona != i.persona
               JOIN study_answers mine ON mine.item_id = i.id AND mine.setting_id = p.setting_b
               JOIN study_answers other ON other.item_id = i2.id AND other.setting_id = p.setting_b
               WHERE x.rater_id = ? AND x.attention_of IS NULL AND x.id IN (SELECT issue_id FROM study_votes)
                 AND x.id NOT IN (SELECT attention_of FROM study_issues WHERE rater_id = ? AND attention_of IS NOT NULL)
                 AND mine.text != other.text
               ORDER BY x.id, i2.id""", [rater["id"], rater["id"]])
        if not rows:
            return None
        r = rows[0]
        return db["study_issues"].insert({
            "rater_id": rater["id"], "pair_id": r["pair_id"], "attention_of": r["id"], "left_setting": r["setting"],
            "decoy_item": r["decoy_item"], "decoy_left": int(rng.random() < 0.5), "issued_at": utc_now()}).last_pk

    def count_pairs(self, study_id: int) -> int:
        with self.store.lock:
            return self.store.db["study_pairs"].count_where("study_id = ?", [study_id])

    def issued(self, rater: dict, issue_id: int) -> dict:
        """What the rater sees of an issued pair: no setting names until they have voted."""
        (row,) = self._query(
            """SELECT x.id AS issue, x.left_setting, x.decoy_item, x.decoy_left, p.setting_a, p.setting_b, i.persona,
                      i.prompt, i.card,
                      (SELECT text FROM study_answers WHERE item_id = p.item_id AND setting_id = x.left_setting) AS text_fit,
                      (SELECT text FROM study_answers WHERE item_id = x.decoy_item AND setting_id = x.left_setting)
                          AS text_decoy,
                      (SELECT text FROM study_answers WHERE item_id = p.item_id AND setting_id = p.setting_a) AS text_a,
                      (SELECT text FROM study_answers WHERE item_id = p.item_id AND setting_id = p.setting_b) AS text_b,
                      (SELECT count(*) FROM study_issues y JOIN study_votes v ON v.issue_id = y.id
                       WHERE y.rater_id = x.rater_id AND y.attention_of IS NULL) AS rated,
                      (SELECT count(*) FROM study_issues y JOIN study_votes v ON v.issue_id = y.id
                       WHERE y.rater_id = x.rater_id) AS answered,
                      (SELECT count(*) FROM study_issues y JOIN study_skips k ON k.issue_id = y.id
                       WHERE y.rater_id = x.rater_id) AS skipped
               FROM study_issues x JOIN study_pairs p ON p.id = x.pair_id JOIN study_items i ON i.id = p.item_id
               WHERE x.id = ?""", [issue_id])
        a_left = row["left_setting"] == row["setting_a"]
        study = self.study(rater["study_id"])
        if row["decoy_item"] is not None:  # a silent check: the fitting answer and another persona's
            shown = (row["text_fit"], row["text_decoy"]) if row["decoy_left"] else (row["text_decoy"], row["text_fit"])
        else:
            shown = (row["text_a"], row["text_b"]) if a_left else (row["text_b"], row["text_a"])
        return {"issue": row["issue"], "persona": row["persona"], "card": row["card"], "prompt": row["prompt"],
                "A": shown[0], "B": shown[1],
                "rated": row["rated"], "target": self.target(study), "answered": row["answered"] + row["skipped"],
                "total": self.target(study) + checks_in(self.target(study), study["attention_every"]) + row["skipped"]}

    def target(self, study: dict) -> int:
        """How many first-time pairs each rater of `study` rates."""
        return study["pairs_per_rater"] or self.count_pairs(study["id"])

    def skip(self, rater: dict, issue_id: int) -> dict:
        """A pair the rater passes on: not a vote, not issued to them again; the next pair takes its place."""
        with self.store.write() as db:
            self._open_issue(db, rater, issue_id)
            db["study_skips"].insert({"issue_id": issue_id, "created_at": utc_now()})
        return {"skipped": issue_id}

    def _open_issue(self, db, rater: dict, issue_id: int):
        """Refuses an issue that is not this rater's or already has their answer (vote or skip)."""
        rows = self._query("SELECT rater_id FROM study_issues WHERE id = ?", [issue_id])
        if not rows or rows[0]["rater_id"] != rater["id"]:
            raise NotIssued(f"pair #{issue_id} was not issued to this rater link; ask for the next pair")
        if db["study_votes"].count_where("issue_id = ?", [issue_id]) or \
                db["study_skips"].count_where("issue_id = ?", [issue_id]):
            raise AlreadyVoted(f"pair #{issue_id} already has your vote; votes are final")

    def consent(self, rater: dict, external: dict | None = None) -> dict:
        """The rater agreed to the study's consent text (once); `external` keeps a panel's ids."""
        with self.store.write() as db:
            if not rater["consented_at"]:
                db["study_raters"].update(rater["id"], {"consented_at": utc_now()})
            if external:
                db["study_raters"].update(rater["id"], {"external": json.dumps(external, sort_keys=True)})
        return {"consented": True}

    def vote(self, rater: dict, issue_id: int, choice: str, comment: str | None = None) -> dict:
        """Store one vote for a pair issued to this rater; returns the reveal (which setting was A, B)."""
        if choice not in VOTES:
            raise StoreError(f"vote must be one of {', '.join(VOTES)}, got {choice!r}")
        with self.store.write() as db:
            rows = self._query(
                """SELECT x.id, x.rater_id, x.left_setting, p.setting_a, p.setting_b,
                          (SELECT label FROM study_settings WHERE id = x.left_setting) AS label_left,
                          (SELECT label FROM study_settings WHERE id = CASE WHEN x.left_setting = p.setting_a
                                    THEN p.setting_b ELSE p.setting_a END) AS label_right
                   FROM study_issues x JOIN study_pairs p ON p.id = x.pair_id WHERE x.id = ?""", [issue_id])
            if not rows or rows[0]["rater_id"] != rater["id"]:
                raise NotIssued(f"pair #{issue_id} was not issued to this rater link; ask for the next pair")
            self._open_issue(db, rater, issue_id)  # under the write lock
            vid = db["study_votes"].insert({"issue_id": issue_id, "choice": choice, "created_at": utc_now(),
                                            "comment": comment or None}).last_pk
        return {"vote": vid, "A": rows[0]["label_left"], "B": rows[0]["label_right"]}

    def reveal(self, rater: dict) -> list[dict]:
        """After a rater's last vote, if their study reveals: per pair they rated, the request, the
        settings shown as A and B, and their vote (attention repeats left out)."""
        rows = self._query(
            """SELECT i.prompt, v.choice, (SELECT label FROM study_settings WHERE id = x.left_setting) AS a,
                      (SELECT label FROM study_settings WHERE id = CASE WHEN x.left_setting = p.setting_a
                                THEN p.setting_b ELSE p.setting_a END) AS b
               FROM study_votes v JOIN study_issues x ON x.id = v.issue_id JOIN study_pairs p ON p.id = x.pair_id
               JOIN study_items i ON i.id = p.item_id
               WHERE x.rater_id = ? AND x.attention_of IS NULL ORDER BY v.id""", [rater["id"]])
        return [{"prompt": r["prompt"], "A": r["a"], "B": r["b"], "vote": r["choice"]} for r in rows]

    # -- results --------------------------------------------------------------------
    def votes(self, study_id: int) -> list[dict]:
        """Every vote with what it compared, one row each, in the order cast."""
        return self._query(
            """SELECT v.id AS vote, v.choice, v.comment, v.created_at, x.id AS issue, x.attention_of, x.left_setting,
                      x.decoy_item, x.decoy_left,
                      r.id AS rater_id, r.name AS rater, i.persona, i.prompt, p.id AS pair_id,
                      p.setting_a, p.setting_b,
                      sa.label AS label_a, sb.label AS label_b,
                      aa.text AS text_a, ab.text AS text_b, aa.tokens AS tokens_a, ab.tokens AS tokens_b
               FROM study_votes v JOIN study_issues x ON x.id = v.issue_id
               JOIN study_raters r ON r.id = x.rater_id JOIN study_pairs p ON p.id = x.pair_id
               JOIN study_items i ON i.id = p.item_id
               JOIN study_settings sa ON sa.id = p.setting_a JOIN study_settings sb ON sb.id = p.setting_b
               JOIN study_answers aa ON aa.item_id = p.item_id AND aa.setting_id = p.setting_a
               JOIN study_answers ab ON ab.item_id = p.item_id AND ab.setting_id = p.setting_b
               WHERE p.study_id = ? ORDER BY v.id""", [study_id])
