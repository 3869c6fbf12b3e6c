"""The privacy claim, checked on the wire: a cloud in its own process audits every request it gets;
steered generations for users whose histories hold canaries leak nothing of them. The code names
are marked sensitive, as a user would mark one: unmarked, a steered answer can copy a code into
what it sends (python -m costeer canary measures how often; docs/privacy.md)."""
import pytest
import json
import uuid

from cloudrunner import remote_engine, running_cloud
from costeer.engine.cloud import PROBE_TEXT
from costeer.engine.decoding import Sampling
from costeer.engine.spec import DecodeSpec
from costeer.evaluation.privacy import deny_list
from costeer.steering.defences import Defences
from user_store import UserStore

HISTORIES = {
    "ana": ["I live at 14 Rua das Flores, Porto, and I am allergic to penicillin.",
            "My sister Beatriz teaches violin at the conservatory on Tuesdays."],
    "kenji": ["Strict vegetarian in Osaka; my favourite kissa is Chick Pea Jazz in Nakazakicho.",
              "私は大阪に住んでいて、ジャズが大好きです。毎週金曜日にレコードを聴きます。"],
    "lea": ["My bank PIN hint is the year my dog Pixel was born, 2019.",
            "I write my thesis on graph neural networks at EPFL, advised by Prof. Keller."],
}


@pytest.mark.slow
def test_no_personal_data_reaches_the_cloud(tmp_path, lm):
    audit = tmp_path / "audit.jsonl"
    store = UserStore(tmp_path / "c.db")
    canaries = {}
    for user, texts in HISTORIES.items():
        store.add_user(user)
        canaries[user] = f"CANARY-{uuid.uuid4().hex[:12]}"
        store.add_entry(user, f"My code name is {canaries[user]}.", kind="profile", pinned=True, sensitive=True)
        for t in texts:
            store.add_entry(user, t, kind="profile")
    prompts = ["Plan my Friday evening.", "Write a short note to my family about my week."]
    contexts = []
    with running_cloud(audit) as url:
        engine = remote_engine(url, lm)
        for user in HISTORIES:
            for prompt in prompts:
                context = store.build_context(user, prompt)
                assert canaries[user] in context  # the device model did read the canary
                contexts.append(context)
                deny = deny_list(store.entries(user), lm.tokenizer)
                spec = DecodeSpec("side_by_side", sampling=Sampling(max_new_tokens=8), defences=Defences(deny))
                events = list(engine.stream([{"role": "user", "content": prompt}], context, spec))
                assert events
    records = [json.loads(line) for line in audit.read_text(encoding="utf-8").splitlines()]
    raw = audit.read_text(encoding="utf-8")
    assert len(records) > 10
    for canary in canaries.values():
        assert canary not in raw
    for texts in HISTORIES.values():
        for t in texts:
            for i in range(len(t) - 19):
                assert t[i:i + 20] not in raw, f"history substring {t[i:i + 20]!r} reached the cloud"
    # the first request probes the tokenizer with a fixed public text; every other carries token ids only
    assert records[0]["path"] == "/v1/models" and records[0]["body"] == {}
    assert records[1]["path"] == "/tokenize" and records[1]["body"]["prompt"] == PROBE_TEXT
    completions = [r for r in records if r["path"] == "/v1/completions"]
    assert all(set(r["body"]) <= {"model", "prompt", "max_tokens", "logprobs", "temperature",
                                  "return_tokens_as_token_ids"} for r in completions)
    for r in completions:
        rows = r["body"]["prompt"]
        assert all(isinstance(x, int) for row in rows for x in row)
    # not even as token ids: no 8-token run of any personal context appears in a cloud prompt
    sent = [tuple(row) for r in completions for row in r["body"]["prompt"]]
    for context in contexts:
        ids = lm.tokenizer(context, add_special_tokens=False)["input_ids"]
        grams = {tuple(ids[i:i + 8]) for i in range(len(ids) - 7)}
        for row in sent:
            row_grams = {row[i:i + 8] for i in range(len(row) - 7)}
            assert not grams & row_grams
