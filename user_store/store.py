"""UserStore: each user's personal history in one local SQLite file, and the app's ratings.

The connection and its write transactions are `database.Database`."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .checks import VOTES, text_problem
from .database import Database, StoreError, check_text, utc_now
from .embeddings import MODEL_NAME, embedder, entry_text, from_blobs, to_blob
from .formats import TEXT_FIELDS, card_line, is_writing, item_text, without_line

KINDS = ("profile", "preference", "writing", "chat", "note")
MAX_TEXT_BYTES = 100_000
MAX_TITLE_CHARS = 500
MAX_NAME_CHARS = 100
MAX_IMPORT_BYTES = 5_000_000
EXPORT_FORMAT = "costeer-user"
MAX_RESULTS = 1000  # search -k
MAX_CONTEXT_TOKENS = 100_000
RETRIEVE_K = 3  # entries retrieved per message, besides the pinned and profile ones
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
RRF_DEPTH = 20  # how deep each ranking is read before fusing
FUNCTION_ZIPF = 6.0  # an English word this common is not searched for (see _function_word)
MIN_SIMILARITY = 0.15  # cosine an entry needs to be retrieved by meaning alone


class UnknownUser(StoreError):
    """No user by that name."""


class NoUserName(StoreError):
    """An import file that names no user, imported without saying whose history it is."""


class UnknownEntry(StoreError):
    """No history entry with that id."""


class StaleEntry(StoreError):
    """An edit made from an older version of the entry: someone saved in between."""


class UserStore(Database):
    """Each user's personal history and the live A/B votes; `studies` are in the same file."""

    @property
    def studies(self):
        """Rating studies in the same file (user_store/studies.py)."""
        from .studies import StudyStore

        return StudyStore(self)

    # -- users ----------------------------------------------------------------------
    def add_user(self, name: str) -> int:
        name = _check_name(name)
        with self.write() as db:
            return db["users"].lookup({"name": name}, {"created_at": utc_now()})

    def users(self) -> list[str]:
        return [r["name"] for r in self.rows("users", select="name", order_by="name")]

    def delete_user(self, name: str):
        with self.write() as db:
            db["users"].delete(self._user_id(name))  # entries go with it: ON DELETE CASCADE
            db.execute("UPDATE study_items SET card = ? WHERE persona = ?", [f"{name} (no profile entries shared)", name])

    def _user_id(self, name: str) -> int:
        rows = self.rows("users", "name = ?", [name], select="id", limit=1)
        if not rows:
            raise UnknownUser(f"unknown user {name!r}")
        return rows[0]["id"]

    # -- entries --------------------------------------------------------------------
    def add_entry(self, user: str, text: str, kind: str = "note", title: str | None = None, pinned: bool = False,
                  sensitive: bool = False) -> int:
        """`sensitive` puts the entry's distinctive words on the steering deny-list (costeer/steering/defences.py)."""
        fields = _check_entry({"text": text, "kind": kind, "title": title, "pinned": pinned, "sensitive": sensitive})
        uid = self._user_id(user)  # an unknown user is refused before any embedding work
        [vector] = embedder().encode([entry_text(fields)])  # before the transaction: the lock is not held for it
        with self.write() as db:
            now = utc_now()
            entry_id = db["entries"].insert({"user_id": uid, **fields,
                                             "created_at": now, "updated_at": now}).last_pk
            _store_vectors(db, [entry_id], [vector])
            return entry_id

    def update_entry(self, entry_id: int, version: int | None = None, **fields):
        """Edit an entry. `version` is the one the edit was made from (the entry's "version" when it
        was read): if the entry has been saved since, nothing is written and StaleEntry says so.
        Without it, the edit applies to whatever is stored (scripts, the CLI)."""
        unknown = set(fields) - set(_EDITABLE)
        if unknown:
            raise StoreError(f"update_entry: unknown field(s) {sorted(unknown)}; allowed: {', '.join(_EDITABLE)}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise StoreError(f"version must be an integer, got {version!r}")
        with self.write() as db:
            current = self.entry(entry_id)
            merged = _check_entry({k: fields.get(k, current[k]) for k in _EDITABLE})
            assignments = ", ".join(f"{k} = ?" for k in merged)
            changed = db.execute(f"UPDATE entries SET {assignments}, updated_at = ?, version = version + 1 "
                                 "WHERE id = ? AND version = ?",
                                 [*merged.values(), utc_now(), entry_id,
                                  current["version"] if version is None else version]).rowcount
            if not changed:
                raise StaleEntry(f"entry #{entry_id} was changed in another tab or window since you opened it "
                                 f"(version {current['version']}, yours {version}); nothing was saved: reload it, "
                                 "then edit again")
            if entry_text(merged) != entry_text(current):
                _store_vectors(db, [entry_id], embedder().encode([entry_text(merged)]))
            if merged["sensitive"] or card_line(merged) != card_line(current):  # marked sensitive, or reworded
                self._unshare(db, current, self._owner(db, entry_id))

    def delete_entry(self, entry_id: int):
        with self.write() as db:
            current = self.entry(entry_id)
            owner = self._owner(db, entry_id)
            db["entries"].delete(entry_id)
            self._unshare(db, current, owner)

    def _unshare(self, db, entry: dict, user: str):
        """Remove an entry from every stored copy a rater can see (the persona cards of studies),
        in the transaction that deletes it or marks it sensitive."""
        line = card_line(entry)
        for item in db.query("SELECT id, card FROM study_items WHERE persona = ?", [user]):
            card = without_line(item["card"], line)
            if card != item["card"]:
                db["study_items"].update(item["id"], {"card": card or f"{user} (no profile entries shared)"})

    def _owner(self, db, entry_id: int) -> str:
        return db.execute("SELECT u.name FROM users u JOIN entries e ON e.user_id = u.id WHERE e.id = ?",
                          [entry_id]).fetchone()[0]

    def entry(self, entry_id: int) -> dict:
        rows = self.rows("entries", "id = ?", [entry_id], select=_ENTRY_COLUMNS) if isinstance(entry_id, int) else []
        if not rows:
            raise UnknownEntry(f"unknown entry id {entry_id!r}")
        return rows[0]

    def entries(self, user: str, kind: str | None = None) -> list[dict]:
        uid = self._user_id(user)
        if kind is not None and kind not in KINDS:
            raise StoreError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        where = "user_id = ?" + (" AND kind = ?" if kind else "")
        return self.rows("entries", where, [uid, kind] if kind else [uid], select=_ENTRY_COLUMNS,
                          order_by="pinned DESC, id")

    # -- retrieval ------------------------------------------------------------------
    def search(self, user: str, query: str, k: int = 5) -> list[dict]:
        """BM25-ranked entries of `user` only. Any text is a safe query: terms are quoted."""
        uid = self._user_id(user)
        _check_k(k)
        match, short = _fts_query(query or "")
        results: list[dict] = []
        if match:  # already quoted term by term: sqlite-utils' own quoting would join them with AND
            with self.lock:
                results = [{**{c: r[c] for c in _ENTRY_FIELDS}, "score": r["rank"]} for r in self.db["entries"].search(
                    match, where="user_id = :uid", where_args={"uid": uid}, limit=k, include_rank=True)]
        # Terms shorter than a trigram (e.g. a two-character Japanese word) fall back to LIKE.
        if short and len(results) < k:
            seen = {r["id"] for r in results}
            like = " OR ".join(["text LIKE ? ESCAPE '\\' OR coalesce(title, '') LIKE ? ESCAPE '\\'"] * len(short))
            args = [p for t in short for p in (f"%{_like_escape(t)}%",) * 2]
            for r in self.rows("entries", f"user_id = ? AND ({like})", [uid, *args], select=_ENTRY_COLUMNS, order_by="id"):
                if r["id"] not in seen and len(results) < k:
                    results.append({**r, "score": None})
        return results

    def similar(self, user: str, query: str, k: int = 5) -> list[dict]:
        """Entries of `user` by meaning: cosine similarity of their vectors to the query's."""
        uid = self._user_id(user)
        _check_k(k)
        ids, matrix = self._vectors(uid)
        if not ids or not (query or "").strip():
            return []
        cosine = matrix @ embedder().encode([query])[0]
        order = np.argsort(-cosine, kind="stable")[:k]
        found = {e["id"]: e for e in self.rows("entries", f"id IN ({','.join('?' * len(order))})",
                                                [ids[i] for i in order], select=_ENTRY_COLUMNS)}
        return [{**found[ids[i]], "similarity": float(cosine[i])} for i in order]

    def retrieve(self, user: str, query: str, k: int = RETRIEVE_K) -> list[dict]:
        """The entries most relevant to `query`: keyword (BM25) and meaning (vector) rankings fused
        by reciprocal rank, so an exact name still wins and a message sharing no word with an
        entry still finds it. An entry found by meaning alone must reach MIN_SIMILARITY: below
        it, the nearest entries of a short history are unrelated, and the small device model
        would copy them."""
        _check_k(k)
        by_words = self.search(user, query, k=RRF_DEPTH)
        by_meaning = [e for e in self.similar(user, query, k=RRF_DEPTH) if e["similarity"] >= MIN_SIMILARITY]
        fused: dict[int, dict] = {}
        for ranking, key in ((by_words, "words_rank"), (by_meaning, "meaning_rank")):
            for rank, e in enumerate(ranking, 1):
                hit = fused.setdefault(e["id"], {**{c: e[c] for c in _ENTRY_FIELDS}, "rrf": 0.0})
                hit["rrf"] += 1 / (RRF_K + rank)
                hit[key] = rank
        return sorted(fused.values(), key=lambda e: (-e["rrf"], e["id"]))[:k]

    def context_entries(self, user: str, query: str, max_tokens: int = 512,
                        count_tokens: Callable[[str], int] | None = None) -> list[dict]:
        """The entries the personal context for one message is made of, each with its `line`:
        pinned and `profile` entries (who the user is matters to every message), then the
        RETRIEVE_K most relevant others (`retrieve`), cut to `max_tokens`. The rest stay out:
        a small device model copies whatever context it is given."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_CONTEXT_TOKENS:
            raise StoreError(f"max_tokens must be an integer in [1, {MAX_CONTEXT_TOKENS}], got {str(max_tokens)[:30]}")
        count = count_tokens or (lambda s: len(s.split()))
        standing = [e for e in self.entries(user) if e["pinned"] or e["kind"] == "profile"]
        retrieved = [e for e in self.retrieve(user, query, k=RETRIEVE_K + len(standing))
                     if not (e["pinned"] or e["kind"] == "profile")][:RETRIEVE_K]
        used: list[dict] = []
        for e in standing + retrieved:
            line = context_line(e)
            lines = [u["line"] for u in used]
            if count("\n".join(lines + [line])) <= max_tokens:
                used.append({**e, "line": line})
                continue
            words = line.split(" ")  # the first item that does not fit is cut to the budget
            lo, hi = 0, len(words)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if count("\n".join(lines + [" ".join(words[:mid])])) <= max_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            if lo > 1:  # more than the leading "-" alone
                used.append({**e, "line": " ".join(words[:lo])})
            break
        return used

    def build_context(self, user: str, query: str, max_tokens: int = 512,
                      count_tokens: Callable[[str], int] | None = None) -> str:
        """The personal context for one message, one line per entry (`context_entries`)."""
        return "\n".join(e["line"] for e in self.context_entries(user, query, max_tokens, count_tokens))

    def _vectors(self, uid: int) -> tuple[list[int], np.ndarray]:
        """(entry ids, their vectors) for one user; entries stored before vectors existed, or
        under another embedding model, get theirs now (the migration to schema 6 is lazy)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT e.id, e.title, e.text, v.vector FROM entries e LEFT JOIN entry_vectors v "
                "ON v.entry_id = e.id AND v.model = ? WHERE e.user_id = ? ORDER BY e.id", [MODEL_NAME, uid]).fetchall()
            missing = [r for r in rows if r[3] is None]
            if missing:
                fresh = embedder().encode([entry_text({"title": r[1], "text": r[2]}) for r in missing])
                with self.write() as db:
                    _store_vectors(db, [r[0] for r in missing], fresh)
                blobs = dict(zip([r[0] for r in missing], (to_blob(v) for v in fresh)))
                rows = [(r[0], r[1], r[2], r[3] if r[3] is not None else blobs[r[0]]) for r in rows]
        return [r[0] for r in rows], from_blobs([r[3] for r in rows])

    # -- import / export ------------------------------------------------------------
    def export_user(self, user: str) -> dict:
        entries = [{k: e[k] for k in ("kind", "title", "text", "pinned", "sensitive", "created_at", "updated_at")}
                   for e in self.entries(user)]
        for e in entries:
            e["pinned"], e["sensitive"] = bool(e["pinned"]), bool(e["sensitive"])
        return {"format": EXPORT_FORMAT, "version": 1, "user": user, "entries": entries}

    def import_user(self, data, mode: str = "merge", user: str | None = None) -> dict:
        """Import one user's history; all checked first, then written in one transaction.

        `data` is an export dict, a LongLaMP-style row ({"profile": [...]}) or a list of entries
        (ours, or LongLaMP profile items with title/abstract/review/text). `user` names the
        target when `data` does not, or overrides it. "merge" skips exact duplicates;
        "replace" deletes the user's entries first.
        """
        if mode not in ("merge", "replace"):
            raise StoreError(f"mode must be 'merge' or 'replace', got {mode!r}")
        name, items = _parse_import(data, user)
        name = _check_name(name)
        vectors = embedder().encode([entry_text(item) for item in items])  # before the transaction
        with self.write() as db:
            uid = self.add_user(name)
            if mode == "replace":
                for old in db["entries"].rows_where("user_id = ?", [uid], select=_ENTRY_COLUMNS):
                    db["entries"].delete(old["id"])
                    self._unshare(db, old, name)
            existing = {(r["kind"], r["title"] or "", r["text"]): r for r in db["entries"].rows_where(
                "user_id = ?", [uid], select="id, kind, title, text, sensitive")}
            added = skipped = 0
            now = utc_now()
            for item, vector in zip(items, vectors):
                key = (item["kind"], item["title"] or "", item["text"])
                if key in existing:
                    skipped += 1
                    if item["sensitive"] and not existing[key]["sensitive"]:  # a protection is never dropped
                        db["entries"].update(existing[key]["id"], {"sensitive": 1, "updated_at": now})
                        existing[key]["sensitive"] = 1
                    continue
                new_id = db["entries"].insert({"created_at": now, "updated_at": now, **item, "user_id": uid}).last_pk
                _store_vectors(db, [new_id], [vector])
                existing[key] = {**item, "id": new_id}  # a later duplicate in the same file merges into it
                added += 1
        return {"user": name, "added": added, "skipped": skipped}

    def import_file(self, path, mode: str = "merge", user: str | None = None) -> dict:
        """Import a .json (export / LongLaMP row / list) or .jsonl (one entry per line) file."""
        return self.import_user(read_import(path), mode=mode, user=user)

    def replace_victim(self, data, user: str | None = None) -> tuple[str, int] | None:
        """(user, entries) that a "replace" import of `data` would delete, when it names a user
        who has entries: the UI and the CLI ask before doing it."""
        name, _ = _parse_import(data, user)
        if name not in self.users():
            return None
        n = len(self.entries(name))
        return (name, n) if n else None


    # -- ratings ----------------------------------------------------------------------
    def add_vote(self, rater: str, user: str, conversation, answer_a: str, answer_b: str,
                 steered_side: str, vote: str, params: dict, cloud_model: str | None = None,
                 local_model: str | None = None) -> int:
        rater = _check_name(rater, "rater")
        if steered_side not in ("A", "B"):
            raise StoreError(f"steered_side must be 'A' or 'B', got {steered_side!r}")
        if vote not in VOTES:
            raise StoreError(f"vote must be one of {', '.join(VOTES)}, got {vote!r}")
        for field, value in (("answer_a", answer_a), ("answer_b", answer_b)):
            if not isinstance(value, str):
                raise StoreError(f"{field} must be text, got {type(value).__name__}")
            check_text(value, field)
        check_text(json.dumps(conversation, ensure_ascii=False, default=str), "conversation")
        with self.write() as db:
            return db["votes"].insert({
                "rater": rater, "user": str(user), "conversation": json.dumps(conversation, ensure_ascii=False),
                "answer_a": answer_a, "answer_b": answer_b, "steered_side": steered_side, "vote": vote,
                "params": json.dumps(params, sort_keys=True), "cloud_model": cloud_model,
                "local_model": local_model, "created_at": utc_now()}).last_pk

    def votes(self) -> list[dict]:
        rows = self.rows("votes", order_by="id")
        for r in rows:
            r["conversation"] = json.loads(r["conversation"])
            r["params"] = json.loads(r["params"])
        return rows


def read_import(path) -> object:
    """The JSON of an import file, read within MAX_IMPORT_BYTES; every problem a StoreError naming
    the file (and, for JSONL, the line)."""
    path = Path(path)
    try:
        if not path.is_file():  # a FIFO would block, /dev/zero never ends
            raise StoreError(f"import file {path.name}: not a regular file")
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_bytes = f.read(MAX_IMPORT_BYTES + 1)  # the stat could be stale: never read more
        if max(size, len(raw_bytes)) > MAX_IMPORT_BYTES:
            raise StoreError(f"import file {path.name} is {max(size, len(raw_bytes)) / 1e6:.1f} MB; the limit is "
                             f"{MAX_IMPORT_BYTES / 1e6:g} MB")
        raw = raw_bytes.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read import file {path.name}: {exc}") from exc
    lineno = 1
    try:
        if path.suffix.lower() == ".jsonl":
            data = []
            for lineno, line in enumerate(raw.splitlines(), 1):
                if line.strip():
                    data.append(json.loads(line))
        else:
            data = json.loads(raw)
    except json.JSONDecodeError as exc:
        line = lineno if path.suffix.lower() == ".jsonl" else exc.lineno
        raise StoreError(f"import file {path.name} is not valid JSON: {exc.msg} at line {line}") from None
    except RecursionError:
        raise StoreError(f"import file {path.name} is nested too deeply to be a history export") from None
    return data


_ENTRY_FIELDS = ("id", "kind", "title", "text", "pinned", "sensitive", "version", "created_at", "updated_at")
_EDITABLE = ("text", "kind", "title", "pinned", "sensitive")
_ENTRY_COLUMNS = ", ".join(_ENTRY_FIELDS)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff66-\uff9f]")


def _fts_query(query: str, max_terms: int = 64) -> tuple[str, list[str]]:
    """A MATCH expression of quoted terms joined by OR, plus the terms too short for trigrams."""
    terms, short = [], []
    for word in re.findall(r"\w+", query):
        if len(word) >= 3:
            if _CJK.search(word) and len(word) > 3:  # no spaces in CJK runs: match by trigrams
                terms += [word[i:i + 3] for i in range(len(word) - 2)]
            else:
                terms.append(word)
        elif _CJK.search(word):
            short.append(word)
    unique = [t for t in dict.fromkeys(t.lower() for t in terms) if not _function_word(t)][:max_terms]
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in unique), list(dict.fromkeys(short))[:max_terms]


def context_line(entry: dict) -> str:
    """One entry as a line of the personal context: its text alone. Kind tags and titles
    ("[preference] Food: …") were copied into answers word for word, and measured no better
    (docs/evaluation.md)."""
    return "- " + " ".join(entry["text"].split())


def _store_vectors(db, entry_ids: list[int], vectors):
    db["entry_vectors"].upsert_all([{"entry_id": i, "model": MODEL_NAME, "vector": to_blob(v)}
                                    for i, v in zip(entry_ids, vectors)], pk="entry_id")


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RESULTS:
        raise StoreError(f"k must be an integer in [1, {MAX_RESULTS}], got {str(k)[:30]}")


def _function_word(term: str) -> bool:
    """"for", "my", "what": so common in English (wordfreq Zipf >= FUNCTION_ZIPF) that, matched
    as trigrams inside other words ("for" in "before", "formal"), they only add noise to BM25."""
    from wordfreq import zipf_frequency

    return zipf_frequency(term, "en") >= FUNCTION_ZIPF


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _check_name(name, field: str = "user name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise StoreError(f"{field} must be non-empty text")
    check_text(name, field)
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise StoreError(f"{field} must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
    return name


def _check_entry(fields: dict) -> dict:
    text, kind, title, pinned = fields["text"], fields["kind"], fields["title"], fields["pinned"]
    sensitive = fields.get("sensitive", False)
    if not isinstance(text, str) or not text.strip():
        raise StoreError("text must be non-empty (not only whitespace)")
    check_text(text, "text")
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise StoreError(f"text must be at most {MAX_TEXT_BYTES} bytes (100 kB), got {len(text.encode('utf-8'))}")
    if kind not in KINDS:
        raise StoreError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if title is not None:
        if not isinstance(title, str):
            raise StoreError(f"title must be text or null, got {type(title).__name__}")
        check_text(title, "title")
        title = title.strip() or None
        if title and len(title) > MAX_TITLE_CHARS:
            raise StoreError(f"title must be at most {MAX_TITLE_CHARS} characters, got {len(title)}")
    if not isinstance(pinned, (bool, int)) or pinned not in (0, 1):
        raise StoreError(f"pinned must be true or false, got {pinned!r}")
    if not isinstance(sensitive, (bool, int)) or sensitive not in (0, 1):
        raise StoreError(f"sensitive must be true or false, got {sensitive!r}")
    return {"text": text, "kind": kind, "title": title, "pinned": int(bool(pinned)), "sensitive": int(bool(sensitive))}


def _parse_import(data, user: str | None) -> tuple[str, list[dict]]:
    default_kind = "note"
    if isinstance(data, dict):
        if "entries" in data:
            name, items = data.get("user"), data["entries"]
        elif "profile" in data:  # a LongLaMP row
            name, items = data.get("user") or data.get("name"), data["profile"]
            default_kind = "writing"  # a profile lists the user's past writings
        else:
            raise StoreError("import: expected an object with 'entries' (export format) or 'profile' (LongLaMP), "
                             f"got keys {sorted(data)[:8]}")
    elif isinstance(data, list):
        name, items = None, data
    else:
        raise StoreError(f"import: expected a JSON object or list, got {type(data).__name__}")
    name = user or name
    if not name:
        raise NoUserName("import: no user name: the file has no 'user' field; choose a user to import into")
    if not isinstance(items, list):
        raise StoreError(f"import: 'entries' must be a list, got {type(items).__name__}")
    parsed = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise StoreError(f"import: entry {i} must be an object, got {type(item).__name__}")
        text = item_text(item)
        if text is None:
            raise StoreError(f"import: entry {i} has no text (expected one of: {', '.join(TEXT_FIELDS)})")
        kind = item.get("kind") or ("writing" if is_writing(item) else default_kind)
        try:
            fields = _check_entry({"text": text, "kind": kind, "title": item.get("title"), "pinned": item.get("pinned", False),
                                   "sensitive": item.get("sensitive", False)})
        except StoreError as exc:
            raise StoreError(f"import: entry {i}: {exc}") from None
        for stamp in ("created_at", "updated_at"):
            if isinstance(item.get(stamp), str) and not text_problem(item[stamp]):
                fields[stamp] = item[stamp]
        parsed.append(fields)
    return name, parsed
