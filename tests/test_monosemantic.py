"""Lesson 09's tools: the story generator's labels, nearest tokens, k-means, and pico-llm's stub done."""

import hashlib

import pytest
import torch

from picollm_helpers import get_tokenizer
from picollm_helpers.models import LSTMSeqModel, TransformerModel
from picollm_helpers.monosemantic import (
    context_text,
    kmeans,
    label_tokens,
    monosemantic_analysis_for_token,
    nearest_tokens,
    token_embeddings,
)
from picollm_helpers.stories import CONCEPTS, generate_labelled_stories, generate_stories

# sha256 of "\0".join(generate_stories(n, seed)) as the generator wrote them before it learned to label its
# words (computed from the version without labels): every lesson's data and the model cache depend on these bytes.
BEFORE_LABELS = {(200, 0): "5a2f7ee08ac2464a9d96ce5484240caa03a33caa51ca952a0d852f8f27202875",
                 (50, 7): "e54fe6f7c58579a90d72806963210644c71e755a4799680e3393fdabc352b641"}


@pytest.mark.parametrize("n,seed", sorted(BEFORE_LABELS))
def test_labelling_leaves_the_stories_byte_identical(n, seed):
    texts = generate_stories(n, seed=seed)
    assert hashlib.sha256("\0".join(texts).encode()).hexdigest() == BEFORE_LABELS[(n, seed)]
    assert [t for t, _ in generate_labelled_stories(n, seed=seed)] == texts


def test_labels_mark_the_words_drawn_from_the_tables():
    from picollm_helpers.stories import COLORS, OBJECTS, PET_NAMES, PLACES

    seen = set()
    for text, spans in generate_labelled_stories(300):
        last = 0
        for start, end, concept in spans:
            assert 0 <= last <= start < end <= len(text) and concept in CONCEPTS
            word = text[start:end]
            seen.add(concept)
            if concept == "pet name":
                assert word in PET_NAMES
            elif concept == "place":
                assert word.lower() in PLACES
            elif concept == "colour":
                assert word.lower() in COLORS
            elif concept == "object":
                assert word.lower() in OBJECTS
            last = end
    assert seen == set(CONCEPTS)   # 300 stories hold every concept


def test_a_story_s_own_hero_is_labelled_every_time_it_is_named():
    text, spans = generate_labelled_stories(1)[0]
    names = {text[s:e] for s, e, c in spans if c in ("person name", "pet name")}
    for name in names:
        starts = {s for s, e, c in spans if text[s:e] == name}
        assert starts == {i for i in range(len(text)) if text.startswith(name, i)
                          and not text[i - 1:i].isalpha() and not text[i + len(name):i + len(name) + 1].isalpha()}


def test_token_labels_follow_the_character_spans():
    tok = get_tokenizer()
    text, spans = "Once there was a dog named Pip. Pip was happy.", [(17, 20, "animal"), (27, 30, "pet name"),
                                                                  (32, 35, "pet name"), (40, 45, "feeling")]
    ids, labels = label_tokens(text, spans, CONCEPTS, tok)
    assert ids == tok.encode_ordinary(text)
    pieces = [tok.decode([i]) for i in ids]
    got = {p: CONCEPTS[c] for p, c in zip(pieces, labels) if c >= 0}
    assert got == {" dog": "animal", " Pip": "pet name", " happy": "feeling"}
    assert sum(c == CONCEPTS.index("pet name") for c in labels) == 2
    assert labels[pieces.index(" there")] == -1
    with pytest.raises(ValueError, match="character"):
        label_tokens(text, [(0, 4, "no such concept")], CONCEPTS + ("no such concept",),
                     type("Bad", (), {"encode_ordinary": lambda self, t: [1], "decode": lambda self, i: "X"})())


def test_nearest_tokens_by_cosine_and_the_stub_signature():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0]])
    near = nearest_tokens(emb, 0, top_n=2)
    assert [i for i, _ in near] == [1, 3] and near[0][1] == pytest.approx(0.9 / (0.81 + 0.01) ** 0.5)

    class Enc:
        def decode(self, ids):
            return "abcd"[ids[0]]
    model = LSTMSeqModel(4, 2)
    with torch.no_grad():
        model.embedding.weight.copy_(emb)
    assert [t for t, _ in monosemantic_analysis_for_token(0, model, Enc(), top_n=3)] == ["b", "d", "c"]
    tf = TransformerModel(vocab_size=4, embed_size=8, n_heads=2, n_blocks=1, block_size=4)
    assert token_embeddings(tf) is not None and token_embeddings(tf).shape == (4, 8)
    with pytest.raises(ValueError, match="token_id=9"):
        nearest_tokens(emb, 9)


def test_kmeans_finds_planted_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 5
    x = torch.cat([c + 0.3 * torch.randn(20, 3, generator=g) for c in centres])
    assign, found = kmeans(x, 3, seed=0)
    groups = [set(assign[i * 20:(i + 1) * 20].tolist()) for i in range(3)]
    assert all(len(gr) == 1 for gr in groups) and len(set.union(*groups)) == 3
    with pytest.raises(ValueError, match="k=0"):
        kmeans(x, 0)


def test_context_text_brackets_the_centre():
    assert context_text(["a", " b", " c", " d"], 1, width=1) == "a[ b] c d"


def test_feature_explorer_shows_a_units_top_contexts_and_its_concept():
    from picollm_helpers.widgets import FeatureExplorer

    tokens = ["Once", " a", " dog", " named", " Pip", ".", " Pip", " ran", "."]
    labels = torch.tensor([-1, -1, 2, -1, 1, -1, 1, -1, -1])
    feats = torch.zeros(9, 3)
    feats[[4, 6], 1] = torch.tensor([2.0, 1.5])              # feature 1: pets' names
    neurons = torch.rand(9, 2, generator=torch.Generator().manual_seed(0))
    ex = FeatureExplorer({"features": feats, "neurons": neurons}, tokens, labels=labels, concepts=CONCEPTS,
                         unit=1, top_k=2)
    assert ex.error is None and [p for p, _, _ in ex.contexts] == [4, 6]
    assert ex.best_concept == "pet name" and ex.purity == 1.0 and ex.n_active == 2
    assert "[ Pip]" in ex.contexts[0][2]
    ex.basis.value = "neurons"                               # unit 1 exists there too
    assert ex.error is None and ex.unit.max == 1 and len(ex.contexts) == 2
    ex.unit.value = 0
    assert ex.contexts[0][0] == int(neurons[:, 0].argmax())
    with pytest.raises(ValueError, match="one row per token"):
        FeatureExplorer({"bad": torch.zeros(3, 2)}, tokens)


def test_a_claim_not_tested_on_real_text_is_recorded(tmp_path, monkeypatch):
    """Lesson 09 on real TinyStories records its label claims as not tested, through the rules' not_tested."""
    from picollm_helpers import evidence
    from picollm_helpers.results import LessonResults

    monkeypatch.setenv("PICOLLM_RESULTS", str(tmp_path))
    r = LessonResults("09_monosemanticity")
    r.claim("feature-pet-names", "An SAE finds a feature for pets' names.",
            evidence.not_tested("real text carries no labels", "the synthetic stories"), kind="lesson",
            summary="An SAE feature detects pets' names")
    assert r.claims[0]["verdict"] == "not tested" and r.claims[0]["key"] == "not measured"
