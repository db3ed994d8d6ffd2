"""The prose rule (mmlib.reporting.prose): hand-typed measured numbers in Markdown, and glue consistency."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mmlib.reporting import prose
from mmlib.reporting.prose import (
    MESSAGE,
    check_glue,
    check_notebook,
    claim_ids,
    design_constants,
    find_measured_numbers,
    mask_markdown,
    scan_numbers,
)


def measured(markdown: str, allowed=(), claims=()) -> list[str]:
    """The violations' texts."""
    return [t.text for t in find_measured_numbers(markdown, allowed, claims)]


def kinds(markdown: str, allowed=()) -> dict[str, str]:
    return {t.text: t.kind for t in scan_numbers(markdown, allowed)}


# --------------------------------------------------------------------------- measured numbers are found
def test_measured_decimals_with_an_interval():
    assert measured("ρ = 0.76 [0.72, 0.83] at NMI ≥ 0.05") == ["0.76", "0.72", "0.83", "0.05"]


def test_integers_and_counts():
    assert measured("on about 105 matched features, 37 TextD") == ["105", "37"]


def test_percentages():
    assert measured("about 45 % of them, 67% and 12\u202f% and 3 percent") == ["45 %", "67%", "12\u202f%", "3 percent"]
    tokens = scan_numbers("about 45 % of them")
    assert tokens[0].percent and tokens[0].value == 45


@pytest.mark.parametrize("text, value", [("8,000", 8000), ("1,234,567", 1234567), ("8\u2009000", 8000),
                                         ("8\u202f000", 8000), ("8\u00a0000", 8000), ("2 048", 2048),
                                         ("3,000.5", 3000.5)])
def test_thousands_separators_make_one_token(text, value):
    (token,) = scan_numbers(f"trained on {text} pairs")
    assert token.text == text and token.value == value and token.kind == "measured"


def test_lists_with_commas_are_separate_tokens():
    assert measured("values 0.2,0.7 and (13, 17)") == ["0.2", "0.7", "13", "17"]


@pytest.mark.parametrize("text", ["0.2–0.7", "0.2-0.7", "0.2—0.7", "0.2 – 0.7"])
def test_ranges_give_both_ends(text):
    assert [t.value for t in find_measured_numbers(f"shape stayed at {text} after")] == [0.2, 0.7]


def test_a_percent_sign_on_the_second_end_applies_to_the_first():
    first, second = scan_numbers("77–78 % of the features")
    assert first.percent and second.percent
    assert measured("77–78 % of them", allowed={0.77}) == ["78 %"]


def test_signs():
    assert measured("CLIP 0.09 [−0.13, 0.28] and -0.4 and +0.3 and ±0.02") == ["0.09", "−0.13", "0.28", "-0.4",
                                                                             "+0.3", "±0.02"]
    assert measured("[−0.13, 0.28]", allowed={0.13, 0.28}) == []  # the sign is ignored


def test_scientific_notation_units_and_multipliers():
    assert measured("lr 2e-3 and 1.5e4") == ["2e-3", "1.5e4"]
    assert measured("runs in 26s, 100k iterations, 14x slower, 3.2 GB") == ["26s", "100k", "14x", "3.2"]
    assert measured("100k iterations", allowed={100000}) == []
    assert measured("a leading-dot decimal p < .05") == [".05"]


def test_a_number_before_a_hyphenated_unit_is_a_number():
    assert measured("after the 90-second budget, with 2-px shifts") == ["90", "2"]


def test_a_product_with_a_middle_dot_is_a_number():
    assert measured("K = 8·d latents") == ["8"]


# --------------------------------------------------------------------------- names are not numbers
@pytest.mark.parametrize("text", ["ViT-B-32", "ViT-B/32", "CC3M", "L0", "L1 penalty", "v3", "recall@5", "top-20",
                                  "00_world_and_models", "fig3.png", "open_clip 3.3.0", "K=8d", "3D", "the 1st",
                                  "i2t", "float32", "L2-normalised", "x_1", "#12"])
def test_names_are_not_numbers(text):
    assert measured(f"see {text} here") == []
    assert all(t.kind == "name" for t in scan_numbers(f"see {text} here"))


# --------------------------------------------------------------------------- structural numbers
@pytest.mark.parametrize("text", [
    "Table 3.1", "Figure 3.2", "Fig. 2", "Figs. 2 and 3", "Section 3.4", "section 3", "§5.1", "§ 5.1", "§§5–6",
    "chapter 03", "Chapter 03", "chapters 03–05", "chapters 03 and 06", "chapters 06 to 10", "row 51",
    "item 7", "items 1–7", "claim 5.4", "claims 5.2 and 5.3", "Tables 3.1, 3.2 and 3.4", "Table\n8.5",
    "Eq. 4", "Appendix 2", "pp. 12–14", "Table 3.10",
])
def test_references_are_structural(text):
    assert measured(f"as shown in {text}.") == []
    assert {t.kind for t in scan_numbers(f"as shown in {text}.")} <= {"reference", "claim"}


def test_a_singular_reference_takes_no_list():
    assert measured("Table 3.1, 8 of 11 features") == ["8", "11"]
    assert measured("chapter 03 and 42 seeds") == ["42"]
    assert measured("Tables 3.1 and 3.2 show 42 features") == ["42"]


@pytest.mark.parametrize("text", ["5.1a", "6.2b", "**5.7a — larger**"])
def test_claim_ids_are_structural(text):
    assert measured(f"Verdict on {text}: supported") == []


def test_a_bare_claim_id_needs_a_declaration():
    text = "* **5.2** the classes align with intuition"
    assert measured(text) == ["5.2"]
    assert measured(text, claims={"5.2"}) == []
    assert measured("the claim 5.2 and, later, the 5.2 verdict") == []  # declared in the same cell


def test_claim_ids_declared_by_the_notebook(tmp_path):
    nb = new_notebook(cells=[new_markdown_cell("## 4.2 The classes (claims 5.2 and 5.3)"),
                             new_code_cell('v = Verdict("5.4", "x", "y", "z")\nw = Verdict(claim="6.1a")')])
    assert claim_ids(nb) == {"5.2", "5.3", "5.4", "6.1a"}


def test_arxiv_ids_and_dois_are_not_numbers():
    assert measured("the paper (arXiv:2502.14888, doi:10.1000/182.5) says") == []


@pytest.mark.parametrize("text", ["# 03 · The Modality Dominance Score", "## 3.2 Method level", "### 3.2.1 Detail",
                                  "## 1. A planted dictionary", "  ## 7.3 v1 defence"])
def test_a_chapters_numbered_headings_are_structural(text):
    assert measured(text) == []


def test_other_numbers_in_headings_are_not():
    assert measured("## 3.2 The 42 features") == ["42"]


def test_ordered_list_markers_are_structural():
    assert measured("1. first\n2. second\n   10) tenth\n> 3. quoted") == []
    assert measured("1. first with 0.83") == ["0.83"]


@pytest.mark.parametrize("text", ["(Wang et al., ICLR 2024)", "(Liang et al., 2022)", "Wang et al. (2024)",
                                  "(Roy & Vetterli, 2007)", "Gandelsman et al. 2024", "Xiao (2021)",
                                  "NeurIPS 2023", "(Chen et al., 2021; Wang et al., 2024)"])
def test_citation_years_are_structural(text):
    assert measured(f"as in {text} we do") == []


def test_other_years_are_not():
    assert measured("trained on 2024 pairs") == ["2024"]
    assert measured("the tiny CLIP, 2000 pairs") == ["2000"]


# --------------------------------------------------------------------------- masked syntax
@pytest.mark.parametrize("text", [
    "$d = 64$", "$K = 8d = 8 \\cdot 512 = 4096$", "$$\nK = 0.83\n$$", "$$x = 3$$",
    "\\begin{align}\nx &= 0.83\n\\end{align}",
    "{math}`x = 0.83`", "`N_RETRIEVAL = 500`", "``code with ` and 0.83``", "```python\nx = 0.83\n```",
    "~~~\n0.83\n~~~", "```{math}\n0.83\n```", "```{code-block} python\nx = 0.83\n```",
    "{glue:text}`rho_07:.2f`", "{glue}`n_1000`", "{glue:md}`table_3`", "{glue:}`x_2`", "{glue:any}`x_3`",
    "```{glue:figure} fig_0_83\n:figwidth: 300px\n:name: fig-3-1\n```", "```{glue} key_42\n```",
    ":::{glue:figure} fig_0_83\n:::", "(fig-3-1)=", "{ref}`Table 3 <tab-3-1>`", "{doc}`../03_mds`",
    "{numref}`fig-3-2`", "{eq}`eq-4`", "{cite}`wang2024`", "{colab}`03_mds`",
    "[the paper](https://arxiv.org/abs/2502.14888)", "![a figure](img/fig_0.83.png \"title 4\")",
    "<https://example.org/v1.2/42>", "see https://example.org/a/42?x=0.83 there", "<!-- 0.83 -->",
    "<!--\nmulti-line 0.83\n-->", "{{ n_pairs_8000 }}", "<img src=\"a.png\" width=\"300\">", "[^42]",
    "[ref-42]: https://example.org/42",
])
def test_masked_syntax_hides_its_numbers(text):
    assert measured(f"before\n\n{text}\n\nafter") == []


def test_masking_keeps_positions_and_lines():
    text = "a $x = 1$ b `2` c\n```\n3\n```\nd 0.83"
    masked = mask_markdown(text)
    assert len(masked) == len(text) and masked.count("\n") == text.count("\n")
    assert masked.index("0.83") == text.index("0.83")


def test_a_directive_body_is_prose_but_not_its_options_and_argument():
    text = ("```{figure} img/fig_0.91.png\n:width: 300px\n:name: fig-3\n\nCaption: accuracy 0.83.\n```\n\n"
            ":::{note}\nNested 0.42\n```{code-block}\n0.99\n```\n:::\n\n"
            "```{admonition} Result 0.61\n:class: tip\nBody 0.62\n```")
    assert measured(text) == ["0.83", "0.42", "0.61", "0.62"]


def test_link_text_is_prose_but_not_its_url():
    assert measured("[0.83 of them](https://example.org/0.42)") == ["0.83"]


def test_sub_and_sup_roles_keep_their_content():
    assert measured("10{sup}`7` samples and x{sub}`2`") == ["10", "7", "2"]


# --------------------------------------------------------------------------- design constants
def test_universal_constants():
    assert measured("MDS between 0 and 1, midpoint 0.5 (0.50), 100 %, 1.0") == []


def test_values_are_normalised():
    assert measured("8,000 pairs, 0.30 and 45 %", allowed={8000, 0.3, 0.45}) == []
    assert measured("45 %", allowed={45}) == []
    assert measured("0.45", allowed={45}) == ["0.45"]  # only a percent matches its hundredth
    assert measured("1.0e-3", allowed={0.001}) == []


def notebook(markdown: str, code: str = "", **kw) -> nbformat.NotebookNode:
    cells = [new_markdown_cell(markdown, id="md1")]
    if code:
        cells.insert(0, new_code_cell(code, id="code1"))
    return new_notebook(cells=cells, **kw)


def write(tmp_path: Path, nb: nbformat.NotebookNode, name: str = "03_test.ipynb") -> Path:
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def test_design_constants_are_the_numbers_assigned_to_upper_case_names():
    code = ('%matplotlib inline\nN_RETRIEVAL = 500\nMATCH_NMI = 0.05\nL1_SWEEP = (0.03, 0.1, 0.3)\n'
            'STEP: float = -2e-3\nA, B = 1_000, {"k": 7}\nx = 0.42 + 0.43\nshow(table, digits=3)\n'
            'print("0.77")  # 0.78\nf"{0.79}"\n')
    constants = design_constants(notebook("", code))
    assert constants == {500, 0.05, 0.03, 0.1, 0.3, 0.002, 1000, 7}
    # a number that merely occurs in the code (a computation, an argument) or in strings and comments is not declared
    assert not {0.42, 0.43, 3, 0.77, 0.78, 0.79} & constants


def test_design_constants_skip_a_cell_that_does_not_parse():
    assert design_constants(notebook("", "N = 500\ns = '''unterminated")) == set()
    nb = notebook("", "N = 500")
    nb.cells.append(new_code_cell("s = '''unterminated", id="code2"))
    assert design_constants(nb) == {500}


def test_check_notebook_allows_code_literals_and_reports_the_rest(tmp_path):
    md = "We use 500 pairs and λ ∈ {0.03, 0.1, 0.3}; accuracy was 0.77 and 0.78."
    path = write(tmp_path, notebook(md, "N_RETRIEVAL = 500\nL1_SWEEP = (0.03, 0.1, 0.3)"))
    violations = check_notebook(path, profile=None)
    assert [v.token for v in violations] == ["0.77", "0.78"]
    v = violations[0]
    assert v.notebook == str(path) and v.cell_id == "md1" and v.cell_index == 1
    assert "0.77" in v.context and len(v.context) <= 48
    assert v.message == MESSAGE and "glue" in str(v) and "design constant" in str(v)
    assert check_notebook(path, profile=None, extra_constants=[0.77, 0.78]) == []


def test_profile_fields_are_design_constants(tmp_path):
    from mmlib.profiles import get_profile

    tiny = get_profile("tiny")
    n_train = tiny.world.n_train
    assert n_train not in prose.UNIVERSAL_CONSTANTS
    path = write(tmp_path, notebook(f"The world has {n_train:,} training pairs."))
    assert [v.token for v in check_notebook(path, profile=None)] == [f"{n_train:,}"]
    assert check_notebook(path, profile="tiny") == []
    assert {float(n_train), float(tiny.embed_batch_size)} <= prose.profile_constants("tiny")


def test_profile_walk_covers_nested_dataclasses_tuples_and_dicts_but_not_bools(monkeypatch):
    import mmlib.profiles

    @dataclasses.dataclass(frozen=True)
    class Inner:
        p: tuple[float, ...] = (0.25, 0.75)
        flag: bool = True
        table: dict = dataclasses.field(default_factory=lambda: {"a": 17, "b": (19.5,)})

    @dataclasses.dataclass(frozen=True)
    class Outer:
        name: str = "fake"
        inner: Inner = Inner()
        n: int = 4242

    monkeypatch.setattr(mmlib.profiles, "get_profile", lambda name: Outer())
    prose.profile_constants.cache_clear()
    try:
        assert prose.profile_constants("fake") == {0.25, 0.75, 17.0, 19.5, 4242.0}
    finally:
        prose.profile_constants.cache_clear()


# --------------------------------------------------------------------------- properties
_decimal = st.decimals(min_value=0, max_value=10_000, places=3, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(_decimal)
def test_property_a_hand_typed_number_in_prose_is_reported(value):
    text = f"{value:f}".rstrip("0").rstrip(".") or "0"
    allowed = prose.UNIVERSAL_CONSTANTS  # 0, 1/2, 1, 100 and the 95 % level may be typed anywhere
    expected = [] if float(text) in allowed else [text]
    assert measured(f"The model reached {text} on the test split.") == expected


@settings(max_examples=200, deadline=None)
@given(_decimal, st.sampled_from(["${}$", "$x = {}$", "$$y={}$$", "{{glue:text}}`k_{}`", "{{glue}}`{}`",
                                  "`{}`", "{{math}}`{}`", "[link](https://x.org/{})", "<!-- {} -->"]))
def test_property_numbers_inside_math_glue_code_urls_comments_are_never_reported(value, template):
    assert measured("value " + template.format(value) + " here") == []


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1000, max_value=10**9))
def test_property_thousands_separators_round_trip(n):
    (token,) = scan_numbers(f"about {n:,} pairs")
    assert token.value == n and token.text == f"{n:,}"


# --------------------------------------------------------------------------- glue consistency
def glue_output(key: str, plain: str) -> nbformat.NotebookNode:
    prefix = "application/papermill.record/"
    return new_output("display_data", data={prefix + "text/plain": plain},
                      metadata={"scrapbook": {"name": key, "mime_prefix": prefix}})


def executed_notebook(markdown: str) -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_code_cell("glue(...)", id="c1", outputs=[glue_output("acc", "'0.76 [0.72, 0.80]'"),
                                                     glue_output("rho", "0.7612"),
                                                     glue_output("n", "8000")]),
        new_markdown_cell(markdown, id="m1"),
    ])


def test_check_glue_passes_when_every_used_key_is_glued_once(tmp_path):
    md = ("acc {glue:text}`acc`, rho {glue:text}`rho:.2f`, n {glue}`n`, other {glue:text}`other::key`\n\n"
          "```{glue:figure} acc\n:doc: other.ipynb\n```")
    assert check_glue(write(tmp_path, executed_notebook(md))) == []


def test_check_glue_reports_missing_duplicate_and_numpy_values(tmp_path):
    nb = executed_notebook("{glue:text}`acc` {glue:text}`missing:.3f` {glue:md}`missing_md`\n\n"
                           "```{glue:figure} missing_fig\n:name: fig-1\nCaption.\n```\n\n"
                           ":::{glue:math} missing_math\n:::\n\n`{glue}`in_code``")
    nb.cells.append(new_code_cell("glue again", id="c2", outputs=[glue_output("acc", "'0.77'"),
                                                                  glue_output("np", "np.float64(0.5)")]))
    problems = check_glue(write(tmp_path, nb))
    text = "\n".join(problems)
    for key in ("missing", "missing_md", "missing_fig", "missing_math"):
        assert f"glue key {key!r} is used in Markdown cell m1 but never glued" in text
    assert "'in_code'" not in text
    assert "glue key 'acc' is glued 2 times (cells c1, c2)" in text
    assert "glue key 'np' (cell c2) holds 'np.float64(0.5)'" in text
    assert len(problems) == 6


@pytest.mark.slow
def test_check_glue_reads_what_myst_nb_glue_writes(tmp_path):
    """An executed notebook (nbclient, the kernel papermill uses) whose cell calls myst_nb.glue."""
    from nbclient import NotebookClient

    nb = new_notebook(cells=[
        new_code_cell("from myst_nb import glue\nimport numpy as np\nglue('acc', '0.76 [0.72, 0.80]', display=False)\n"
                      "glue('rho', 0.76, display=False)\nglue('bad', np.float64(0.5), display=False)"),
        new_markdown_cell("{glue:text}`acc` {glue:text}`rho:.2f` {glue:text}`bad` {glue:text}`absent`"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    problems = check_glue(write(tmp_path, nb))
    assert len(problems) == 2, problems
    assert "'absent'" in problems[0] and "np.float64(0.5)" in problems[1]


# --------------------------------------------------------------------------- CLI
def test_cli_exit_codes_and_report(tmp_path, capsys):
    clean = write(tmp_path, notebook("See Table 3.1 and $x = 0.83$."), "00_clean.ipynb")
    dirty = write(tmp_path, notebook("Accuracy 0.83 and 0.84.\n\nAnd 12 %."), "01_dirty.ipynb")
    assert prose.main([str(clean), "--profile", "none"]) == 0
    out = capsys.readouterr().out
    assert "00_clean.ipynb: 0 hand-typed number(s)" in out
    assert prose.main([str(clean), str(dirty), "--profile", "none"]) == 1
    out = capsys.readouterr().out
    assert "01_dirty.ipynb: 3 hand-typed number(s)" in out and "total: 3 hand-typed number(s) in 1 of 2" in out
    assert "0.84" in out and MESSAGE in out
    assert prose.main([str(dirty), "--profile", "none", "--constant", "0.83", "--constant", "0.84",
                       "--constant", "12"]) == 0


def test_cli_runs_as_a_module(tmp_path):
    dirty = write(tmp_path, notebook("Accuracy 0.83."), "01_dirty.ipynb")
    run = subprocess.run([sys.executable, "-m", "mmlib.reporting.prose", "--profile", "none", "--summary", str(dirty)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 1, run.stderr
    assert "01_dirty.ipynb: 1 hand-typed number(s)" in run.stdout
    ok = subprocess.run([sys.executable, "-m", "mmlib.reporting.prose", "--profile", "none", "--glue",
                         str(write(tmp_path, executed_notebook("{glue:text}`acc`"), "02_ok.ipynb"))],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
