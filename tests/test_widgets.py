"""The explorers' logic, driven by setting control values as a student's clicks would."""
import pytest
import torch

from picollm_helpers import run_with_cache, run_with_hooks
from picollm_helpers.interp import ablate_head, attention_patterns, duplicate_token_scores, pattern_scores
from picollm_helpers.models import TransformerModel
from picollm_helpers.models.transformer import HookPoint
from picollm_helpers.tokenizer import get_tokenizer
from picollm_helpers.widgets import AttentionExplorer, TopPExplorer

# An untrained model samples arbitrary GPT-2 tokens, some in scripts the plot font lacks.
pytestmark = pytest.mark.filterwarnings("ignore:Glyph .* missing from font")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TransformerModel(vocab_size=50257, embed_size=16, n_heads=2, n_blocks=2, block_size=32, pos_emb="learned")
    with torch.no_grad():  # a peaked next-token distribution, so different p keep different sets
        m.lm_head.weight.mul_(40)
    return m.eval()


def test_top_p_explorer_follows_its_controls(model):
    tok = get_tokenizer()
    ex = TopPExplorer(model, tok, "Once upon a", top_p=0.1, max_new_tokens=8)
    assert ex.error is None and len(ex.nucleus) >= 1
    assert sum(q for _, q in ex.nucleus) == pytest.approx(1.0, abs=1e-4)
    small, first_sample = len(ex.nucleus), ex.sample_text
    assert first_sample.startswith("Once upon a") and len(first_sample) > len("Once upon a")
    ex.p.value = 0.9
    assert len(ex.nucleus) > small
    assert ex.nucleus_mass >= 0.9 - 1e-6
    ex.p.value = 1.0
    assert ex.nucleus_mass == pytest.approx(1.0, abs=1e-4)
    ex.prompt.value = "The dog"
    assert ex.sample_text.startswith("The dog")
    before = ex.sample_text
    ex.button.click()
    assert ex.seed.value == 1 and ex.sample_text != before
    ex.top_k.value = 3
    assert len(ex.nucleus) <= 3


def test_top_p_explorer_shows_errors_in_its_output(model):
    ex = TopPExplorer(model, get_tokenizer(), "Once upon a", max_new_tokens=4)
    ex.prompt.value = ""
    assert ex.error is not None and "empty" in ex.error
    assert ex.nucleus == [] and ex.sample_text == ""
    shown = [o for o in ex.out.outputs if "text/html" in o.get("data", {})]
    assert shown and "empty" in shown[-1]["data"]["text/html"]
    ex.prompt.value = "Hello"
    assert ex.error is None and ex.nucleus


def test_attention_explorer_switches_layer_and_head(model):
    tok = get_tokenizer()
    prompt = "Once upon a time, there was a little girl named Lily."
    ex = AttentionExplorer(model, tok, prompt)
    n = len(tok.encode(prompt))
    assert ex.pattern.shape == (n, n) and len(ex.top) == n
    assert torch.allclose(ex.pattern.sum(-1), torch.ones(n), atol=1e-5)
    _, cache = run_with_cache(model, torch.tensor([tok.encode(prompt)]), ["blocks.0.attn.hook_pattern"])
    assert torch.equal(ex.pattern, cache["blocks.0.attn.hook_pattern"][0, 0])  # layer 0, head 0
    assert not any(m.active for m in model.modules() if isinstance(m, HookPoint))  # no hook left behind
    first = ex.pattern.clone()
    ex.head.value = 1
    assert not torch.allclose(ex.pattern, first)
    ex.layer.value = 1
    assert not torch.allclose(ex.pattern, first)
    ex.prompt.value = ""
    assert ex.error and "empty" in ex.error and ex.pattern is None
    ex.prompt.value = "word " * 40
    assert "context" in ex.error


def test_attention_explorer_grid_scores_and_ablation(model):
    tok = get_tokenizer()
    prompt = "Lily saw a cat. Lily saw a"
    ids = tok.encode(prompt)
    ex = AttentionExplorer(model, tok, prompt, layer=1, head=0, scores={"induction": torch.full((2, 2), 0.25)})
    html_out = "".join(o["data"]["text/html"] for o in ex.out.outputs)
    # The head's scores on the prompt, beside the given (held-out) ones.
    assert "picollm-head-scores" in html_out and "0.25" in html_out
    attn = attention_patterns(model, torch.tensor(ids))
    want = pattern_scores(attn)["previous_token"][1, 0]
    assert ex.head_score["previous_token"] == pytest.approx(float(want))
    assert ex.head_score["duplicate_token"] == pytest.approx(
        float(duplicate_token_scores(attn, torch.tensor([ids]))[1, 0]))
    # Without ablation: the next-token distribution only, the model's own.
    assert ex.kl is None and all(pa is None for _, _, pa in ex.next_tokens)
    probs = run_with_hooks(model, torch.tensor([ids]), {})[0, -1].softmax(-1)
    assert ex.next_tokens[0][1] == pytest.approx(float(probs.max()), abs=1e-5)
    # Ablating the head: the distribution from run_with_hooks with the head's hook_z zeroed.
    ex.ablate.value = True
    ablated = run_with_hooks(model, torch.tensor([ids]), ablate_head(1, 0))[0, -1].softmax(-1)
    first_tok = ex.next_tokens[0][0]
    i = tok.encode(first_tok)[0]
    assert ex.next_tokens[0][2] == pytest.approx(float(ablated[i]), abs=1e-5)
    assert ex.kl > 0 and "KL" in "".join(o["data"]["text/html"] for o in ex.out.outputs)
    kl_head0 = ex.kl
    ex.head.value = 1  # another head, another effect
    assert ex.kl != pytest.approx(kl_head0)
    # The all-heads grid is a different (larger) picture of the same layer.
    single = ex.out.outputs[0]["data"]["text/html"]
    ex.all_heads.value = True
    grid = ex.out.outputs[0]["data"]["text/html"]
    assert ex.error is None and grid != single
    assert torch.equal(ex.pattern, attn["blocks.1.attn"][0, 1])
