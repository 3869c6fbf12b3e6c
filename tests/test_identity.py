"""The same request gives the same answer on every path a presenter or a rater sees it through:
steered alone, side by side (Chat), `/generate_pair` (the API) and a rating study's pre-generated
answer. Greedy decoding with the app's demo defaults (the copy guard included), the shipped
personas and their example prompts, the bundled model."""
import json

import pytest

from conftest import ROOT
from costeer.engine.decoding import Sampling
from costeer.engine.spec import DecodeSpec
from costeer.engine.text import end_on_sentence
from costeer.steering.policy import SteeringParams
from studies import design
from ui.handlers import DEMO, DEMO_DECODING, Studio
from user_store import UserStore

TOKENS = 48
DECODING = {"temperature": 0.0, "top_p": 1.0, "seed": None, "max_new_tokens": TOKENS, **DEMO_DECODING}
PERSONAS = sorted((ROOT / "assets" / "personas").glob("*.json"))


def steered(engine, messages, context, mode, defences) -> str:
    params = SteeringParams(T=DEMO["T"], eta=DEMO["eta"], lam=DEMO["lam"])
    spec = DecodeSpec(mode, params, Sampling(max_new_tokens=TOKENS, **DEMO_DECODING), defences=defences)
    text, finish, n = "", None, 0
    for ev in engine.stream(messages, context, spec):
        if ev.stream == "steered":
            text, finish, n = text + ev.text, ev.finish or finish, n + 1
    return end_on_sentence(text, finish, n)


@pytest.mark.slow
@pytest.mark.parametrize("persona", PERSONAS, ids=[p.stem for p in PERSONAS])
def test_one_request_one_answer_alone_side_by_side_api_and_study(engine, tmp_path, persona):
    from studies.pregenerate import Pregenerator

    store = UserStore(tmp_path / "s.db")
    user = store.import_file(persona)["user"]
    store.update_entry(store.entries(user)[-1]["id"], sensitive=True)  # a deny-list, as a careful user has
    studio = Studio(engine, store)
    examples = json.loads(persona.read_text(encoding="utf-8"))["examples"]
    demo = {"T": DEMO["T"], "eta": DEMO["eta"], "lam": DEMO["lam"], "label": "demo"}
    chosen = [design.baseline(DECODING), design.setting_from(demo, DECODING, "s")]
    items = [{"persona": user, "prompt": q, "card": "c"} for q in examples]
    sid = store.studies.create("s", "judge", items, [{"label": s.label, "baseline": s.baseline, "config": s.config}
                                                      for s in chosen], design.pairs_of(chosen, False),
                               all_pairs=False, pairs_per_rater=0, attention_every=0)
    Pregenerator(engine, store, studio.context_for, studio.defences_for).generate(sid)
    steered_id = next(s["id"] for s in store.studies.settings(sid) if not s["baseline"])
    in_study = {r["prompt"]: r["text"] for r in store.db.query(
        "SELECT i.prompt, a.text FROM study_answers a JOIN study_items i ON i.id = a.item_id WHERE a.setting_id = ?",
        [steered_id])}
    defences = studio.defences_for(user)
    assert defences is not None and defences.deny_ids and defences.copy_guard == DEMO["copy_guard"]
    for q in examples:
        messages, context = [{"role": "user", "content": q}], studio.context_for(user, q)
        alone = steered(engine, messages, context, "steered", defences)
        assert alone.strip()
        assert steered(engine, messages, context, "side_by_side", defences) == alone, q
        assert studio.generate_pair(user, q, max_new_tokens=TOKENS)[1] == alone, q
        assert in_study[q] == alone, q
    store.close()
