"""The owner's page's named API (gradio_client, raw HTTP), documented in docs/app.md. Each
endpoint is a thin function whose signature and docstring Gradio shows in view_api; the ranges
are the UI's (fields/), checked by the handler it calls."""
from __future__ import annotations

import gradio as gr

from ..guard import for_api
from ..handlers import DEMO, DEMO_DECODING
from ..results import ResultsView


def register(studio, desk):
    """Adds the endpoints to the Blocks being built: the people's and the studies'."""
    for fn in _people(studio) + _studies(desk) + [_results(studio, desk)]:
        gr.api(for_api(fn), api_name=fn.__name__)


def _people(studio) -> list:
    def generate_pair(user: str, message: str, T: int = DEMO["T"], eta: float = DEMO["eta"], lam: float = DEMO["lam"],
                      max_new_tokens: int = 128, repetition_penalty: float = DEMO_DECODING["repetition_penalty"],
                      no_repeat_ngram_size: int = DEMO_DECODING["no_repeat_ngram_size"],
                      copy_guard: int = DEMO["copy_guard"]) -> list[str]:
        """[unsteered, steered]: the answers to one message for one user, with the Chat tab's demo
        defaults; an answer cut by max_new_tokens ends on a sentence with "(cut at N tokens)"."""
        return studio.generate_pair(user, message, T, eta, lam, max_new_tokens, repetition_penalty,
                                    no_repeat_ngram_size, copy_guard)

    def chat(user: str, message: str, side_by_side: bool = True, T: int = DEMO["T"], eta: float = DEMO["eta"],
             lam: float = DEMO["lam"], max_new_tokens: int = 128,
             repetition_penalty: float = DEMO_DECODING["repetition_penalty"],
             no_repeat_ngram_size: int = DEMO_DECODING["no_repeat_ngram_size"], copy_guard: int = DEMO["copy_guard"],
             sigma: float = 0.0, tau: float = 0.0, speculate: int = 1, private: bool = False) -> dict:
        """One turn of a new conversation, as the Chat tab runs it: {steered, unsteered (side by side),
        settings (with the context entries used and the deny-list size), privacy (what the cloud
        received per stream and the audit: exposed terms, the deny-list check), latency (the readout,
        the device's precision and the projection for real pairs)}. `private`: Private mode; the
        privacy report then lists the kept-back positions (what the user read, what the cloud got)."""
        return studio.chat_reply(user, message, side_by_side, T, eta, lam, max_new_tokens, repetition_penalty,
                                 no_repeat_ngram_size, copy_guard, sigma, tau, speculate, private)

    def edit_history(user: str, entry_id: int, text: str, kind: str | None = None, title: str | None = None,
                     pinned: bool | None = None, sensitive: bool | None = None) -> dict:
        """Change one of the user's history entries (a field left out keeps its value); returns the
        entry as /history lists it."""
        return studio.edit_history(user, entry_id, text, kind, title, pinned, sensitive)

    def delete_history(user: str, entry_id: int) -> int:
        """Delete one of the user's history entries; returns its id."""
        return studio.delete_history(user, entry_id)

    def history(user: str) -> list:
        """One user's history entries (id, kind, title, text, pinned, sensitive)."""
        return studio.history(user)

    def add_history(user: str, text: str, kind: str = "note", sensitive: bool = False) -> int:
        """Add a history entry; returns its id. `sensitive` puts its words on the steering deny-list and keeps it off raters' cards."""
        return studio.add_history(user, text, kind, sensitive)

    def create_user(name: str) -> str:
        """Create a user (no history yet); returns the name."""
        return studio.add_user(name)

    def load_persona(persona: str) -> str:
        """Load an example persona (assets/personas) as a user; returns the user's name."""
        return studio.add_persona(persona)

    def ratings_summary() -> dict:
        """The live A/B tab's votes: counts and the steered win rate with a 95% interval."""
        return studio.ratings_summary()

    return [generate_pair, chat, add_history, edit_history, delete_history, history, ratings_summary, create_user,
            load_persona]


def _studies(desk) -> list:
    def create_study(name: str, personas: list[str], prompts: list[str], settings: list[dict],
                     all_pairs: bool = False, raters: int = 12, pairs_per_rater: int = 0, attention_every: int = 6,
                     max_new_tokens: int = 128, repetition_penalty: float = DEMO_DECODING["repetition_penalty"],
                     no_repeat_ngram_size: int = DEMO_DECODING["no_repeat_ngram_size"],
                     instructions: str = "", cards: dict | None = None, include_flagged: bool = False,
                     reveal: str = "end", consent: str = "", completion_code: str = "", overlap: int = 0) -> dict:
        """A study of personas x prompts x settings (+ the unsteered baseline); its answers are generated
        in the background. `cards` ({persona: text}) is what raters see of each persona (default: its
        profile and preference entries, none marked sensitive). A setting the fluency check flags (C
        above 2: word salad on the bundled model) is refused unless `include_flagged`. Raters rate
        blind; `reveal` "end" shows each rater which setting made which answer after their last vote,
        "never" never does. `consent` (optional) is agreed to once before the first pair;
        `completion_code` is shown at the end (empty: one is made up); `overlap` caps the raters per
        pair (0: no cap; with pairs_per_rater, a quota per rater). Returns the study id, its
        completion code and one link per rater."""
        return desk.create_study(name, personas, prompts, settings, all_pairs, raters, pairs_per_rater,
                                 attention_every, max_new_tokens, repetition_penalty, no_repeat_ngram_size,
                                 instructions, cards, include_flagged, reveal, consent, completion_code, overlap)

    def study_status(study: int) -> dict:
        """Progress of a study: answers generated of total, pairs, raters, votes, status."""
        return desk.study_status(study)

    def cancel_study(study: int) -> dict:
        """Stop generating a study's answers (those made are kept)."""
        return desk.cancel_study(study)

    def add_raters(study: int, raters: int = 1) -> dict:
        """More rater links for a study (shown once)."""
        return desk.add_raters(study, raters)

    def leaderboard(study: int, exclude_flagged: bool = False) -> dict:
        """Bradley-Terry scores with 95% bootstrap intervals, style-controlled scores, win matrix, per
        persona, position bias, agreement and attention checks."""
        return desk.leaderboard(study, exclude_flagged)

    def raters(study: int) -> list:
        """The organizer's desk: per rater {"name", "link", "votes", "target", "checks", "checks_passed",
        "median_s_per_vote", "last_seen", "revoked"}; links made before they were kept are null."""
        return desk.raters(study)

    def revoke_rater(study: int, rater: str) -> dict:
        """Revoke one rater's link (by name, as /raters lists it): refused from now on; their votes stay."""
        return desk.revoke_rater(study, rater)

    return [create_study, study_status, cancel_study, add_raters, leaderboard, raters, revoke_rater]


def _results(studio, desk):
    view = ResultsView(studio, desk)

    def results() -> dict:
        """Every vote in one answer, as the Results tab shows it: {"live": the live A/B votes (as
        /ratings_summary), "studies": [{"study", "name", "status", "votes", "raters", "scores",
        "style_controlled"}]}, scores being Bradley–Terry with 95% intervals, unsteered = 1000."""
        return view.everything()

    return results
