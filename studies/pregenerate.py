"""Answers for a study, generated ahead in one background thread, so a rater never waits.

Each answer is written to SQLite the moment it is finished, so a restart resumes where the last
run stopped (`resume()` at start-up) and a cancel loses nothing already made. Per item the work
is batched the way the engine batches: the baseline rides in the same side-by-side pass as the
first steered setting with the same decoding, and settings that reduce to the same strength C
(with the same decoding and gate) give the same answer, so it is generated once and stored for
each of them.
"""
from __future__ import annotations

import logging
import queue
import threading
from itertools import groupby
from typing import Callable

from costeer.engine.decoding import CoSteerEngine, Defences
from costeer.evaluation.privacy import deny_list
from costeer.engine.summary import ReplySummary
from user_store import UserStore

from .design import Setting

log = logging.getLogger("costeer.app")


class Cancelled(Exception):
    pass


def _same_answer_key(s: Setting):
    """Settings with equal keys give equal answers (the closed form depends on C alone)."""
    return (round(s.strength, 12), s.sampling, s.gate)


class Pregenerator:
    def __init__(self, engine: CoSteerEngine, store: UserStore, context_for: Callable[[str, str], str],
                 defences_for: Callable[[str], Defences | None] | None = None):
        """`context_for` and `defences_for` are the Chat tab's own (the app passes the Studio's), so a
        study's answer is the one Chat gives to the same request; without `defences_for`, the
        persona's deny-list alone."""
        self.engine, self.store, self.context_for, self.defences_for = engine, store, context_for, defences_for
        self.jobs: queue.Queue[int] = queue.Queue()
        self.cancelled: set[int] = set()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="study-pregeneration", daemon=True)
        self.thread.start()

    def submit(self, study_id: int):
        self.jobs.put(study_id)

    def resume(self) -> list[int]:
        """Queue every study a previous run left generating; returns their ids."""
        ids = [s["id"] for s in reversed(self.store.studies.studies()) if s["status"] == "generating"]
        for sid in ids:
            self.submit(sid)
        return ids

    def cancel(self, study_id: int):
        with self._lock:
            self.cancelled.add(study_id)
        self.store.studies.set_status(study_id, "cancelled")

    def _is_cancelled(self, study_id: int) -> bool:
        with self._lock:
            return study_id in self.cancelled

    def _work(self):
        while True:
            sid = self.jobs.get()
            try:
                if self.store.studies.study(sid)["status"] == "generating":
                    self.generate(sid)
                    self.store.studies.set_status(sid, "ready")
            except Cancelled:
                log.info("study %s: generation cancelled", sid)
            except Exception as exc:  # noqa: BLE001 (a bug or a failed model: the study says so)
                log.exception("study %s: generation failed", sid)
                try:
                    self.store.studies.set_status(sid, "failed", f"{type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001
                    log.exception("study %s: could not record the failure", sid)

    def generate(self, study_id: int):
        studies = self.store.studies
        settings = {r["id"]: Setting.from_row(r) for r in studies.settings(study_id)}
        for (item_id, persona, prompt), rows in groupby(studies.pending(study_id),
                                                       key=lambda r: (r["item_id"], r["persona"], r["prompt"])):
            todo = [r["setting_id"] for r in rows]
            messages = [{"role": "user", "content": prompt}]
            context = self.context_for(persona, prompt)
            defences = self._defences(persona)  # the persona's sensitive entries stay protected
            base_id = next((i for i in todo if settings[i].baseline), None)
            steered: dict = {}
            for i in todo:
                if not settings[i].baseline:
                    steered.setdefault(_same_answer_key(settings[i]), []).append(i)
            for ids in steered.values():
                s = settings[ids[0]]
                with_base = base_id is not None and settings[base_id].sampling == s.sampling
                texts = self._answer(study_id, messages, context, "side_by_side" if with_base else "steered", s, defences)
                for i in ids:
                    studies.add_answer(item_id, i, *texts["steered"])
                if with_base:
                    studies.add_answer(item_id, base_id, *texts["unsteered"])
                    base_id = None
            if base_id is not None:
                b = settings[base_id]
                studies.add_answer(item_id, base_id, *self._answer(study_id, messages, "", "unsteered", b)["unsteered"])

    def _defences(self, persona: str) -> Defences | None:
        if persona not in self.store.users():
            return None
        if self.defences_for is not None:
            return self.defences_for(persona)
        deny = deny_list(self.store.entries(persona), self.engine.cloud.tokenizer)
        return Defences(deny_ids=deny) if deny else None

    def _answer(self, study_id: int, messages, context, mode, s: Setting, defences=None) -> dict[str, tuple[str, int]]:
        summary = ReplySummary()
        for ev in self.engine.stream(messages, context, s.spec(mode, defences)):
            if self._is_cancelled(study_id):
                raise Cancelled
            summary.add(ev)
        streams = {"side_by_side": ("steered", "unsteered")}.get(mode, (mode,))
        return {k: (summary[k].shown, summary[k].tokens) for k in streams}  # an answer may be empty (EOS first)
