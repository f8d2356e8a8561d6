"""The claims section's forest plots: one per claim family, differences signed to the paper's direction."""

from __future__ import annotations

from sinternal_lib.claims import CONTRADICTED, SUPPORTED
from sinternal_lib.report_claims import claim_forests, table_cell


def _row(cid, section, diff, ci, verdict, n=100):
    return {"id": cid, "section": section, "arms": ("base", "sft/sinternal"), "diff": diff, "ci95": ci,
            "verdict": verdict, "n": n, "untested": None, "reason": ""}


def test_one_forest_per_family_signed_to_the_papers_direction():
    rows = [_row("c1", "Main table", -0.20, [-0.30, -0.10], SUPPORTED),      # ASR lower: claimed "lower"
            _row("d", "Main table", -0.10, [-0.15, -0.05], CONTRADICTED),     # keeps compliance, margin 0.05
            _row("b1", "Verification", None, None, "cannot test")]
    figs = claim_forests(rows)
    assert list(figs) == ["Main table", "Verification"]
    ax = figs["Main table"].axes[0]
    xs = {round(float(line.get_xdata()[0]), 6) for line in ax.lines if len(line.get_xdata()) == 1}
    assert 20.0 in xs        # c1: a fall of 20 pp in ASR is +20 in the paper's direction
    assert -10.0 in xs       # d: compliance 10 pp lower is -10 (claimed "higher")
    margins = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(margins) == 1 and margins[0].get_xdata()[0] == -5.0  # d's non-inferiority margin
    text = " ".join(t.get_text() for t in figs["Verification"].axes[0].texts)
    assert "cannot test" in text


def test_table_cell_is_one_line_without_pipes():
    assert table_cell("a | b\nc") == "a / b c"
    assert table_cell(None) == "(empty)"


def test_claims_table_and_saved_forests(tmp_path):
    import matplotlib.pyplot as plt

    rows = [_row("c1", "Main table", -0.20, [-0.30, -0.10], SUPPORTED)]
    rows[0].update(claim="Verification SFT lowers ASR on harmful prompts", paper="41.2 -> 0.6", metric="asr",
                   rate_a=0.5, rate_b=0.3, power=0.9, effect=0.15)
    plt.close("all")
    claim_forests(rows, tmp_path)
    assert (tmp_path / "claims_main_table.png").is_file() and plt.get_fignums() == []  # closed: shown once inline
    from sinternal_lib.report_claims import claims_table

    t = claims_table(rows)
    assert t.loc["(c1) Verification SFT lowers ASR on harmful prompts", "difference"].startswith("-20.0 pp [")
    assert t.iloc[0]["verdict"] == SUPPORTED


def test_summary_names_claims_whose_interval_falls_short_of_the_stated_effect():
    from sinternal_lib.claims import INCONCLUSIVE
    from sinternal_lib.report_claims import claims_summary

    def row(cid, metric, diff, ci):
        r = _row(cid, "s", diff, ci, INCONCLUSIVE)
        r.update(metric=metric, power=0.95, effect=0.15 if metric == "asr" else 0.05, mde=None)
        return r

    rows = [row("c1", "asr", +0.028, [0.004, 0.057]),    # ASR up: nowhere near a 15-point fall
            row("c2", "asr", -0.10, [-0.20, 0.01]),      # a 15-point fall is inside the interval
            row("d", "compliance", 0.01, [-0.03, 0.06])]  # non-inferiority: judged by its margin instead
    text = claims_summary(rows)
    assert "For c1 the 95% interval lies wholly short of the stated effect" in text
    assert "c2 the 95%" not in text and "d the 95%" not in text
