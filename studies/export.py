"""A study's votes as battles (FastChat's clean-battle format) and as a spreadsheet-safe CSV.

FastChat's `elo_analysis.report_elo_analysis_results` reads a list of battles with `model_a`,
`model_b`, `winner`, `anony` and `tstamp`; its data release adds `judge`, `question_id`,
`conversation_a/b`, `turn` and `language`. We write those, plus what our analysis needs
(`persona`, lengths and list counts, which pair and which attention check), as extra keys that
FastChat ignores.
"""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime

from .leaderboard import list_lines, winner_of

CSV_COLUMNS = ["vote", "tstamp", "judge", "persona", "prompt", "model_a", "model_b", "winner", "attention_check",
               "answer_a", "answer_b"]


def battles(votes: list[dict]) -> list[dict]:
    """One battle per vote (StudyStore.votes rows), sides as the rater saw them."""
    out = []
    for v in votes:
        a_first = v["left_setting"] == v["setting_a"]
        la, lb = ("a", "b") if a_first else ("b", "a")  # which stored answer was shown as A, as B
        text_a, text_b = v[f"text_{la}"], v[f"text_{lb}"]
        out.append({
            "question_id": v["pair_id"], "model_a": v[f"label_{la}"], "model_b": v[f"label_{lb}"],
            "winner": winner_of(v["choice"]), "judge": v["rater"], "turn": 1, "anony": True, "language": "English",
            "tstamp": datetime.fromisoformat(v["created_at"]).timestamp(),
            "conversation_a": [{"role": "user", "content": v["prompt"]}, {"role": "assistant", "content": text_a}],
            "conversation_b": [{"role": "user", "content": v["prompt"]}, {"role": "assistant", "content": text_b}],
            "persona": v["persona"], "first": v["label_a"], "issue": v["issue"], "attention_of": v["attention_of"],
            # a silent check (another persona's answer on one side): which side fits the card
            "fits": None if v.get("decoy_item") is None else ("A" if v["decoy_left"] else "B"),
            "tokens_a": v[f"tokens_{la}"], "tokens_b": v[f"tokens_{lb}"],
            "lists_a": list_lines(text_a), "lists_b": list_lines(text_b), "vote": v["vote"],
        })
    return out


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(b, ensure_ascii=False) + "\n" for b in rows)


def spreadsheet_safe(value):
    """A CSV cell a spreadsheet will not run: text starting with = + - @ (or a tab or CR) gets a
    leading apostrophe, as OWASP's CSV-injection advice says."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for b in rows:
        w.writerow([spreadsheet_safe(x) for x in (
            b["vote"], datetime.fromtimestamp(b["tstamp"]).isoformat(timespec="seconds"), b["judge"], b["persona"],
            b["conversation_a"][0]["content"], b["model_a"], b["model_b"], b["winner"], b["attention_of"] is not None,
            b["conversation_a"][1]["content"], b["conversation_b"][1]["content"])])
    return buf.getvalue()
