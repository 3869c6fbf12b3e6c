"""The Results tab's one view: the live A/B votes (the Rate tab) or any study's leaderboard, picked
from one menu, and the same as one dict for the named API's /results."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

import fields as F

from .studies import LEADERBOARD_HEADERS, StudiesTab, StudyDesk

LIVE = 0  # the menu's value for the live A/B votes; a study is its id (>= 1)
SOURCE = F.Number("results of", 0, 2**63 - 1, integer=True)
LIVE_HEADERS = ["setting", "votes", "steered wins", "ties", "steered losses", "win rate", "95% CI"]
LIVE_SUMMARY = ("**Live A/B votes** from the Rate tab: the share of votes the steered answer won against the cloud "
                "model alone (tie = ½), with a 95% bootstrap interval, per setting.")


@dataclass
class ResultsView:
    studio: object  # ui.handlers.Studio: the live votes
    desk: StudyDesk

    def choices(self):
        """The menu: the live votes first, then every study, newest first, with its votes so far. The
        value is left alone: a choice made while the menu refreshes is not undone."""
        options = [("Live A/B votes (Rate tab)", LIVE)]
        for s in self.desk.studies.studies():
            votes = self.desk.studies.progress(s["id"])["votes"]
            options.append((f"Study #{s['id']} {s['name']} ({s['status']}, {votes} votes)", s["id"]))
        return gr.update(choices=options)

    def show(self, source=LIVE):
        """(summary, table, plot) for the live votes or one study."""
        source = SOURCE.check(LIVE if source is None else source)
        if source == LIVE:
            rows, fig = self.studio.results()
            return LIVE_SUMMARY, {"headers": LIVE_HEADERS, "data": rows}, fig
        _, summary, rows, _, _, fig, _ = StudiesTab(self.desk).view(source)
        name = self.desk.studies.study(source)["name"]
        return f"### Study #{source}: {name}\n\n{summary}", {"headers": LEADERBOARD_HEADERS, "data": rows}, fig

    def everything(self) -> dict:
        """The API's /results: the live votes and, per study, its Bradley–Terry scores with intervals."""
        studies = []
        for s in self.desk.studies.studies():
            lb = self.desk.leaderboard(s["id"])
            studies.append({"study": s["id"], "name": s["name"], "status": s["status"], "votes": lb["votes"],
                            "raters": lb["raters"], "scores": lb["plain"]["scores"],
                            "style_controlled": lb["style_controlled"]["scores"]})
        return {"live": self.studio.ratings_summary(), "studies": studies}
