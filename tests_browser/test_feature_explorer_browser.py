"""Lesson 09's FeatureExplorer as a student meets it: JupyterLab in a real browser, Run All, then pick a unit
and a basis and read what it shows (see test_widgets_browser.py for the machinery and the other explorers)."""

from __future__ import annotations

import re

from test_widgets_browser import REDRAW_TIMEOUT_S, _explorer, _labelled, _needs

FEATURE_NOTEBOOK = "notebooks/09_monosemanticity.ipynb"

_READ_JS = """root => {
  const out = root.querySelector('.widget-output');
  const all = sel => out ? Array.from(out.querySelectorAll('.jp-OutputArea-output ' + sel)) : [];
  const unit = all('.picollm-unit')[0];
  const img = all('img')[0];
  const err = all('.picollm-error')[0];
  return {unit: unit ? unit.innerText : null, contexts: all('.picollm-context').map(e => e.innerText),
          boxed: all('.picollm-context span[style*="outline"]').length,
          img: img ? img.getAttribute('src') : null, error: err ? err.innerText : null};
}"""


def test_feature_explorer_in_jupyterlab(lab):
    _needs(FEATURE_NOTEBOOK)
    page = lab.page
    lab.open_and_run(FEATURE_NOTEBOOK)

    basis_dd = _labelled(page, ".widget-dropdown", "basis")
    ex = lab.find_widget(_explorer(page, basis_dd), "The FeatureExplorer")
    basis_sel = ex.locator(".widget-dropdown select")
    unit_box = ex.locator(".widget-inline-hbox input[type='number']").first

    seen = {}

    def drawn(basis: str, unit: int):
        def check():
            s = seen["last"] = ex.evaluate(_READ_JS)
            ok = s["img"] and s["contexts"] and f"{basis}, unit {unit}:" in (s["unit"] or "")
            return s if ok else None
        return check

    # a <select> shows its options' spaces as non-breaking ones
    bases = [o.replace("\xa0", " ").strip() for o in basis_sel.locator("option").all_inner_texts()]
    assert len(bases) == 2 and "neurons" in bases, bases
    basis = basis_sel.locator("option:checked").inner_text().replace("\xa0", " ").strip()
    unit = int(unit_box.input_value())
    try:
        state = lab.wait_until(drawn(basis, unit), REDRAW_TIMEOUT_S, "the explorer's first drawing")
    except AssertionError as exc:   # say what the explorer showed instead
        shown = seen.get("last")
        raise AssertionError(f"{exc}\nexpected {basis!r}, unit {unit}; the explorer showed: {shown!r}") from None
    lab.assert_no_widget_errors()
    lab.screenshot(f"{basis}-{unit}", ex)
    assert state["error"] is None and state["boxed"] == len(state["contexts"]) >= 1, state
    assert re.search(r"fires \(> 0\) on [\d,]+ of [\d,]+ tokens", state["unit"]), state["unit"]

    # Another unit: new contexts and a new histogram.
    before = state
    unit = unit + 1
    unit_box.fill(str(unit))
    unit_box.press("Enter")
    state = lab.wait_until(drawn(basis, unit), REDRAW_TIMEOUT_S, f"the explorer to redraw for unit {unit}")
    assert state["img"] != before["img"] and state["contexts"] != before["contexts"], state
    lab.screenshot(f"{basis}-{unit}", ex)

    # The neuron basis: the header names it, and the drawing changes.
    before = state
    basis_sel.select_option(label="neurons")
    state = lab.wait_until(lambda: (s := ex.evaluate(_READ_JS))["unit"] and s["unit"].startswith("neurons, unit")
                           and s["img"] and s, REDRAW_TIMEOUT_S, "the explorer to show a neuron")
    assert state["img"] != before["img"] and state["error"] is None, state
    lab.screenshot("neurons", ex)
    lab.assert_no_widget_errors()
