"""The lessons' explorers as a student meets them: JupyterLab in a real browser, Run All, then click.

nbval runs the notebooks' code but never renders a widget, so "Error displaying widget", a slider
that redraws nothing or a front-end/kernel version mismatch would pass it. These tests open each
lesson in JupyterLab (smoke profile), run it, move the controls and read what the explorer shows.
Screenshots of each state land in test-artifacts/browser/.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TOP_P_NOTEBOOK = "notebooks/03_top_p_sampling.ipynb"
ATTENTION_NOTEBOOK = "notebooks/07_interpretability.ipynb"
NEW_PROMPT = "One day, the little dog"
REDRAW_TIMEOUT_S = 60

NUCLEUS_RE = re.compile(r"Nucleus at p=(\d+\.\d\d):\s*(\d+) token\(s\)")
SAMPLE_RE = re.compile(r"Sample \(seed (\d+)\):\s?(.*)", re.S)


def _needs(path: str) -> None:
    assert (REPO / path).exists(), f"{path} is missing: the browser test drives the explorer in that lesson"


def _explorer(page, has):
    """The explorer's own VBox: the one holding `has` and an output area."""
    return (page.locator(".jp-NotebookPanel:visible .widget-vbox")
            .filter(has=has).filter(has=page.locator(".widget-output")).first)


def _labelled(page, kind: str, label: str):
    return page.locator(kind).filter(has=page.locator(".widget-label", has_text=re.compile(rf"^{label}$")))


def _set_text(box, value: str) -> None:
    """Type into a Text widget and press Enter, as a student does (it syncs on Enter)."""
    box.click()
    box.fill(value)
    box.press("Enter")


# --------------------------------------------------------------------------------------------
# TopPExplorer, notebook 03


def _top_p_state(ex, slider) -> dict:
    """What the explorer shows now, read in one go (a redraw replaces the output area's nodes)."""
    raw = ex.evaluate(_READ_OUTPUT_JS)
    state = {"readout": slider.locator(".widget-readout").inner_text().strip(), "p": None, "n": None,
             "sample": None, "seed": None, "error": raw["error"], "img": raw["img"]}
    m = NUCLEUS_RE.search(raw["nucleus"] or "")
    if m:
        state["p"], state["n"] = m.group(1), int(m.group(2))
    m = SAMPLE_RE.search(raw["sample"] or "")
    if m:
        state["seed"], state["sample"] = int(m.group(1)), m.group(2).strip()
    return state


# One snapshot of an explorer's output area: the texts of the kit's marked elements, the first
# image's src and the top-attended table's rows.
_READ_OUTPUT_JS = """root => {
  const out = root.querySelector('.widget-output');
  const q = sel => out && out.querySelector('.jp-OutputArea-output ' + sel);
  const text = sel => { const el = q(sel); return el ? el.innerText : null; };
  const img = q('img');
  const table = q('table.picollm-top-attended');
  const rows = table ? Array.from(table.querySelectorAll('tr')).map(r => r.innerText) : null;
  return {nucleus: text('.picollm-nucleus'), sample: text('.picollm-sample'), error: text('.picollm-error'),
          img: img ? img.getAttribute('src') : null, scores: text('.picollm-head-scores'),
          ablation: text('.picollm-ablation'), next: text('.picollm-next-tokens'),
          header: rows ? rows[0] : null, rows: rows ? rows.slice(1) : null};
}"""


def test_top_p_explorer_in_jupyterlab(lab):
    _needs(TOP_P_NOTEBOOK)
    page = lab.page
    lab.open_and_run(TOP_P_NOTEBOOK)

    slider = _labelled(page, ".widget-slider", "top-p")
    ex = lab.find_widget(_explorer(page, slider), "The TopPExplorer")
    slider = ex.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=re.compile(r"^top-p$")))
    handle = slider.locator(".noUi-handle")
    prompt_box = ex.locator(".widget-text input[type='text']").first

    def settled():
        """The explorer's output agrees with its p slider (and shows a sample): a redraw finished."""
        s = _top_p_state(ex, slider)
        return s if s["p"] == s["readout"] and s["sample"] is not None else None

    first = lab.wait_until(settled, REDRAW_TIMEOUT_S, "the explorer's first drawing (nucleus and sample)")
    lab.assert_no_widget_errors()
    lab.screenshot("ran", ex)
    assert first["n"] >= 1 and first["img"], first

    # Move p with the keyboard: Home (smallest p), one step right, End (largest), one step left.
    seen = {first["readout"]: first}
    state = first
    for key in ["Home", "ArrowRight", "End", "ArrowLeft"]:
        before = state
        handle.focus()
        page.keyboard.press(key)
        try:  # the readout moves at once, in the browser; the redraw comes from the kernel
            lab.wait_until(lambda before=before: slider.locator(".widget-readout").inner_text().strip()
                           != before["readout"],
                           5, f"the readout to move on {key}")
        except AssertionError:  # Home or End where the slider already was
            assert key in ("Home", "End"), f"{key} did not move the top-p slider from {before['readout']}"
        state = lab.wait_until(settled, REDRAW_TIMEOUT_S,
                               f"the nucleus to follow the slider after {key} (from p={before['readout']})")
        assert state["p"] == state["readout"], state  # the text shows the slider's p
        if state["n"] != before["n"]:
            assert state["img"] != before["img"], "the nucleus changed but the bar chart was not redrawn"
        lab.screenshot(f"p-{state['readout']}", ex)
        seen[state["readout"]] = state
        if key == "Home":
            p_min = state["readout"]
        if key == "End":
            p_max = state["readout"]
    ps = sorted(seen, key=float)
    assert (ps[0], ps[-1]) == (p_min, p_max), f"Home/End should reach the ends of the slider, saw {ps}"
    counts = {p: seen[p]["n"] for p in ps}
    assert list(counts.values()) == sorted(counts.values()), f"the nucleus must not shrink as p grows: {counts}"
    assert counts[p_max] > counts[p_min], f"p={p_max} should keep more tokens than p={p_min}: {counts}"

    # A new prompt: the sample starts from it.
    assert prompt_box.input_value() != NEW_PROMPT
    _set_text(prompt_box, NEW_PROMPT)
    state = lab.wait_until(
        lambda: (s := _top_p_state(ex, slider))["sample"] and s["sample"].startswith(NEW_PROMPT) and s,
        REDRAW_TIMEOUT_S, f"the sample to start with the new prompt {NEW_PROMPT!r}")
    assert state["p"] == state["readout"] and state["error"] is None, state
    assert len(state["sample"]) > len(NEW_PROMPT), f"nothing was sampled after the prompt: {state['sample']!r}"
    lab.screenshot("new-prompt", ex)

    # An empty prompt: a readable error inside the explorer, not a broken widget.
    _set_text(prompt_box, "")
    state = lab.wait_until(lambda: (s := _top_p_state(ex, slider))["error"] and s, REDRAW_TIMEOUT_S,
                           "the explorer's error message for an empty prompt")
    assert "empty" in state["error"].lower(), state["error"]
    assert state["n"] is None and state["sample"] is None, "the error should replace the old drawing"
    lab.screenshot("empty-prompt", ex)
    lab.assert_no_widget_errors()

    # And it recovers when the student types again.
    _set_text(prompt_box, NEW_PROMPT)
    lab.wait_until(lambda: (s := _top_p_state(ex, slider))["sample"] and s["error"] is None and s,
                   REDRAW_TIMEOUT_S, "the explorer to redraw after the error")
    lab.assert_no_widget_errors()


# --------------------------------------------------------------------------------------------
# AttentionExplorer, notebook 07


def _attention_state(ex) -> dict:
    raw = ex.evaluate(_READ_OUTPUT_JS)
    return {k: raw[k] for k in ("img", "header", "rows", "error", "scores", "ablation", "next")}


def test_attention_explorer_in_jupyterlab(lab):
    _needs(ATTENTION_NOTEBOOK)
    page = lab.page
    lab.open_and_run(ATTENTION_NOTEBOOK)

    head_dd = _labelled(page, ".widget-dropdown", "head")
    ex = lab.find_widget(_explorer(page, head_dd), "The AttentionExplorer")
    layer_sel = ex.locator(".widget-dropdown").filter(
        has=page.locator(".widget-label", has_text=re.compile(r"^layer$"))).locator("select")
    head_sel = ex.locator(".widget-dropdown").filter(
        has=page.locator(".widget-label", has_text=re.compile(r"^head$"))).locator("select")

    def drawn(layer: str, head: str):
        def check():
            s = _attention_state(ex)
            ok = s["img"] and s["rows"] and f"layer {layer} head {head}" in (s["header"] or "")
            return s if ok else None
        return check

    layer_labels = [o.strip() for o in layer_sel.locator("option").all_inner_texts()]
    head_labels = [o.strip() for o in head_sel.locator("option").all_inner_texts()]
    cur_layer = layer_sel.locator("option:checked").inner_text().strip()
    cur_head = head_sel.locator("option:checked").inner_text().strip()
    state = lab.wait_until(drawn(cur_layer, cur_head), REDRAW_TIMEOUT_S, "the explorer's first drawing")
    lab.assert_no_widget_errors()
    lab.screenshot(f"layer{cur_layer}-head{cur_head}", ex)
    assert len(head_labels) >= 2, f"the head dropdown offers {head_labels}: nothing to switch to"

    switches = [("head", h) for h in head_labels if h != cur_head][:1]
    switches += [("layer", x) for x in layer_labels if x != cur_layer][:1]
    for control, value in switches:
        before = state
        (head_sel if control == "head" else layer_sel).select_option(label=value)
        cur_head = value if control == "head" else cur_head
        cur_layer = value if control == "layer" else cur_layer
        state = lab.wait_until(drawn(cur_layer, cur_head), REDRAW_TIMEOUT_S,
                               f"the explorer to redraw for layer {cur_layer}, head {cur_head}")
        lab.screenshot(f"layer{cur_layer}-head{cur_head}", ex)
        assert state["img"] != before["img"], f"switching the {control} did not change the heatmap"
        assert state["rows"] != before["rows"], (
            f"switching the {control} did not change the top-attended tokens:\n" + "\n".join(state["rows"]))
        assert len(state["rows"]) == len(before["rows"])  # same prompt, same queries

    # The head's scores sit beside its map; the ablation toggle adds the distribution without the head.
    assert state["scores"] and f"layer {cur_layer} head {cur_head}" in state["scores"], state["scores"]
    assert "KL" not in (state["ablation"] or ""), state["ablation"]

    def checkbox(label: str):
        return ex.locator(".widget-checkbox").filter(has_text=label).locator("input[type='checkbox']")

    before = state
    checkbox("ablate this head").check()
    state = lab.wait_until(lambda: (s := _attention_state(ex))["ablation"] and "KL" in s["ablation"] and s,
                           REDRAW_TIMEOUT_S, "the next-token distribution with the head ablated")
    assert f"layer {cur_layer} head {cur_head}" in state["ablation"], state["ablation"]
    assert re.search(r"KL\(.*\) = \d+\.\d+ nats", state["ablation"]), state["ablation"]
    assert f"without L{cur_layer} H{cur_head}" in state["next"], state["next"]
    assert state["rows"] == before["rows"], "ablating a head must not change its attention map"
    lab.screenshot("ablated", ex)

    checkbox("all heads of the layer").check()
    state = lab.wait_until(lambda: (s := _attention_state(ex))["img"] != before["img"] and s["rows"] and s,
                           REDRAW_TIMEOUT_S, "the all-heads grid")
    assert state["error"] is None and state["rows"] == before["rows"], state
    lab.screenshot("all-heads", ex)
    lab.assert_no_widget_errors()

    prompt_box = ex.locator(".widget-text input[type='text']").first
    _set_text(prompt_box, "")
    state = lab.wait_until(lambda: (s := _attention_state(ex))["error"] and s, REDRAW_TIMEOUT_S,
                           "the explorer's error message for an empty prompt")
    assert "empty" in state["error"].lower(), state["error"]
    assert state["img"] is None and state["rows"] is None, "the error should replace the old drawing"
    lab.screenshot("empty-prompt", ex)
    lab.assert_no_widget_errors()
