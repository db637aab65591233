"""Final-answer extraction and draft-vs-refined comparison (Spark-free kernel, no engine needed)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from boostqa.text.answers import (
    REASONS,
    Final,
    Verdict,
    compare,
    compare_finals,
    compare_many,
    extract_final,
    normalize_expression,
    normalize_number,
)

GSM_72 = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)
GSM_1110 = (
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
    "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n"
    "Over the year that is 10 x 111 = <<10*111=1110>>1,110 dollars.\n"
    "#### 1,110"
)
COT_18 = (
    "Let's think step by step. Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes "
    "muffins with 4, so she uses 3 + 4 = 7 eggs.\nShe sells 16 - 7 = 9 eggs at $2 each.\n"
    "Therefore, the answer is $18."
)
MATH_HALF = (
    "There are 6 outcomes and 3 of them are even, so the probability is $\\frac{3}{6}$, which "
    "simplifies to $\\boxed{\\frac{1}{2}}$."
)
MATH_EXPR = (
    "Expanding, $(x+1)^2 = x^2 + 2x + 1$.\n"
    "Final Answer: The final answer is $\\boxed{x^{2}+2x+1}$. I hope it is correct."
)
MCQ_COT = (
    "Option A is wrong because mitochondria do not perform photosynthesis.\n"
    "Option B describes the ribosome.\n"
    "Option C correctly names the site of ATP synthesis.\n"
    "**Answer:** C."
)

# (draft, refined, verdict, reason code)
CASES = [
    # GSM8K worked solutions
    (GSM_72, "72", "consistent", "number_match"),
    (GSM_72, GSM_72.replace("#### 72", "#### 73"), "inconsistent", "number_mismatch"),
    (GSM_1110, "The answer is 1110.", "consistent", "number_match"),
    (COT_18, "#### 18", "consistent", "number_match"),
    (COT_18, "She makes $20 every day.\n#### 20", "inconsistent", "number_mismatch"),
    # several numbers: only the last final one counts
    ("First I thought the answer is 12, but 5 + 8 = 13. So the final answer is 13.", "13",
     "consistent", "number_match"),
    ("The answer is 7.\nWait, I made an error: 3 * 3 = 9.\nThe answer is 9.", "#### 7", "inconsistent",
     "number_mismatch"),
    # MATH-style boxed answers
    (MATH_HALF, "\\boxed{\\dfrac{1}{2}}", "consistent", "number_match"),
    (MATH_HALF, "So the probability is 0.5.", "consistent", "number_match"),
    (MATH_HALF, "$\\boxed{\\frac{2}{3}}$", "inconsistent", "number_mismatch"),
    (MATH_EXPR, "The answer is $x^2 + 2x + 1$.", "consistent", "expression_match"),
    (MATH_EXPR, "\\boxed{(x+1)^2}", "undecided", "expression_differs"),
    ("\\boxed{\\left( \\frac{\\sqrt{3}}{2} \\right)}", "The answer is $\\dfrac{\\sqrt3}{2}$.", "consistent",
     "expression_match"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "0.8660254", "undecided", "kind_mismatch"),
    ("$\\boxed{(1, 2)}$", "The point is $\\boxed{(1,2)}$.", "consistent", "expression_match"),
    ("\\boxed{\\text{(C)}}", "The answer is (C).", "consistent", "choice_match"),
    # fractions vs decimals
    ("The final answer is 3/4.", "0.75", "consistent", "number_match"),
    ("\\boxed{6/8}", "\\boxed{0.750}", "consistent", "number_match"),
    ("\\boxed{1/3}", "0.333", "inconsistent", "number_mismatch"),
    ("\\boxed{1/3}", "0.3333333", "consistent", "number_match"),
    # multiple choice phrasings
    ("The answer is (C).", "Answer: C", "consistent", "choice_match"),
    (MCQ_COT, "C. Mitochondria", "consistent", "choice_match"),
    ("The correct answer is option B because it is the largest.", "**Answer:** (b)", "consistent",
     "choice_match"),
    ("Answer: D", "After eliminating the others, the answer is A.", "inconsistent", "choice_mismatch"),
    ("Option (D) is correct.", "D", "consistent", "choice_match"),
    ("Answer:\nB", "The best choice is B) 42 kg", "consistent", "choice_match"),
    ("(C)", "42", "undecided", "kind_mismatch"),
    # Chinese phrasing
    ("答案是 C", "The answer is (C).", "consistent", "choice_match"),
    ("解：小明有 5 个苹果，又买了 7 个，一共 5 + 7 = 12 个。\n答案：12", "#### 12", "consistent", "number_match"),
    ("所以答案为 $\\frac{1}{2}$。", "0.5", "consistent", "number_match"),
    ("故选B", "答案是 D", "inconsistent", "choice_mismatch"),
    ("答案是42，因为6乘7等于42。", "The answer is 41.", "inconsistent", "number_mismatch"),
    # units
    ("Thus v = 120/10 = 12 m/s.", "The speed is 12.", "consistent", "number_match"),  # "is <value>" at the end
    ("Thus v = 120/10 = 12 m/s.", "#### 12", "consistent", "number_match"),
    ("The answer is 12 m/s.", "\\boxed{12\\ \\mathrm{m/s}}", "consistent", "number_match"),
    ("The answer is 1.2 km.", "The answer is 1200 m.", "undecided", "unit_mismatch"),
    ("The answer is 5 cm.", "The answer is 6 cm.", "inconsistent", "number_mismatch"),
    ("The angle is $\\boxed{30^\\circ}$.", "30°", "consistent", "number_match"),
    # scientific notation
    ("The answer is 1.2e-3", "$1.2 \\times 10^{-3}$", "consistent", "number_match"),
    ("1.2×10⁻³ mol", "The answer is 0.0012 mol.", "consistent", "number_match"),
    ("The answer is 1.2e-3", "The answer is 1.2e-4", "inconsistent", "number_mismatch"),
    # negative numbers, signs, thousands separators
    ("The answer is −5.", "x = -5", "consistent", "number_match"),
    ("The answer is -5.", "The answer is 5.", "inconsistent", "number_mismatch"),
    ("The answer is 1,234,567.", "#### 1234567", "consistent", "number_match"),
    ("The answer is \\$1,250.50.", "1250.5", "consistent", "number_match"),
    # percentages (see the module's percent rule)
    ("The answer is 25%.", "25", "consistent", "percent_match"),
    ("The answer is 25%.", "0.25", "consistent", "percent_match"),
    ("50 percent", "\\boxed{\\frac{1}{2}}", "consistent", "percent_match"),
    ("The answer is 100%.", "1", "undecided", "percent_ambiguous"),
    ("12.5%", "The answer is 13%.", "inconsistent", "number_mismatch"),
    # x = 4 / "= value" at the end
    ("Solving 2x + 3 = 11 gives\nx = 4", "The answer is 4.", "consistent", "number_match"),
    ("y = 2x + 3", "The line is $y=2x+3$.", "undecided", "kind_mismatch"),
    ("The answer is y = 2x + 3.", "The answer is $y = 2x+3$.", "consistent", "expression_match"),
    ("The answer is x = 4 or x = -4.", "x = 4", "undecided", "kind_mismatch"),
    # short text / yes-no
    ("The answer is yes.", "No.", "inconsistent", "text_opposite"),
    ("Paris", "The answer is Paris.", "consistent", "text_match"),
    # free text and missing answers -> undecided
    ("Photosynthesis converts light energy into chemical energy stored in glucose, using carbon "
     "dioxide and water and releasing oxygen as a by-product in the chloroplasts.",
     "Plants use sunlight to turn CO2 and water into sugar and oxygen; this happens in the chloroplasts "
     "of leaf cells.", "undecided", "no_final"),
    ("The capital of Australia is Canberra.", "Sydney is the largest city, but the capital is Canberra.",
     "undecided", "text_differs"),
    (None, "#### 5", "undecided", "no_final"),
    ("#### 5", None, "undecided", "no_final"),
    (None, None, "undecided", "no_final"),
    ("", "   ", "undecided", "no_final"),
    ("The answer is 5 or 6.", "5", "undecided", "kind_mismatch"),
]


@pytest.mark.parametrize("draft,refined,verdict,code", CASES)
def test_compare_table(draft, refined, verdict, code):
    v = compare(draft, refined)
    assert (v.verdict, v.code) == (verdict, code), v
    assert v.code in REASONS
    # symmetric: swapping draft and refined never changes the verdict
    assert compare(refined, draft).verdict == verdict


def test_table_is_large_and_covers_every_verdict():
    assert len(CASES) >= 40
    assert {c[2] for c in CASES} == {"consistent", "inconsistent", "undecided"}


@pytest.mark.parametrize("text,kind,value,unit", [
    (GSM_72, "number", "72", None),
    (GSM_1110, "number", "1110", None),
    (COT_18, "number", "18", None),
    (MATH_HALF, "number", "1/2", None),
    (MATH_EXPR, "expression", "x^2+2x+1", None),
    (MCQ_COT, "choice", "C", None),
    ("The answer is (C).", "choice", "C", None),
    ("Answer: C", "choice", "C", None),
    ("**Answer:** C.", "choice", "C", None),
    ("C. Paris", "choice", "C", None),
    ("The answer is (c)", "choice", "C", None),
    ("The answer is A bit unclear", "text", "a bit unclear", None),  # "A" as an article is not a choice
    ("答案是 C", "choice", "C", None),
    ("答案：42", "number", "42", None),
    ("答案是 12 米/秒", "number", "12", "米/秒"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "expression", "\\frac{\\sqrt{3}}{2}", None),
    ("\\boxed{x=4}", "number", "4", None),
    ("final answer is 3/4", "number", "3/4", None),
    ("#### 1,000", "number", "1000", None),
    ("12.5%", "number", "12.5%", "%"),
    ("The answer is 50 percent.", "number", "50%", "%"),
    ("The answer is 12 apples.", "number", "12", "apples"),
    ("Thus v = d/t = 120/10 = 12 m/s.", "number", "12", "m/s"),
    ("The answer is 5cm^2", "number", "5", "cm^2"),
    ("The answer is 2x", "expression", "2x", None),  # not 2 with unit "x"
    ("The answer is $\\pi r^2$.", "expression", "\\pi r^2", None),
    ("The answer is 30^\\circ.", "number", "30", "°"),
    ("1.2×10⁻³", "number", "0.0012", None),
    ("The answer is 1.2E3.", "number", "1200", None),
    ("The answer is 3/4 of the total.", "number", "3/4", None),
    ("The answer is 5 because 2 + 3 = 5.", "number", "5", None),
    ("Answer:\n\n$$\n\\frac{1}{2}\n$$", "number", "1/2", None),
    ("x^2+y^2=1", "expression", "x^2+y^2=1", None),  # an equation keeps its left side
    ("Answer: The total number of apples is 12.", "number", "12", None),
    ("So the probability is 0.5.", "number", "0.5", None),
    ("**Final Answer**\n\n42", "number", "42", None),
    ("We compare the two cities.\nThus \\boxed{\\text{Paris}}", "text", "paris", None),
    ("The answer is $5\\%$", "number", "5%", "%"),
    ("答：小明一共有12个苹果。", "text", "小明一共有12个苹果", None),
    ("Paris", "text", "paris", None),
    ("北京", "text", "北京", None),
])
def test_extract_final(text, kind, value, unit):
    f = extract_final(text)
    assert f is not None, text
    assert (f.kind, f.value, f.unit) == (kind, value, unit), f


def test_extract_final_keeps_raw_span_and_number():
    f = extract_final("The answer is 1,234.50 km/h.")
    assert f == Final("number", "1234.5", "1,234.50 km/h", "km/h", 1234.5)
    f = extract_final("So the answer is $\\boxed{\\dfrac{6}{8}}$.")
    assert f is not None and f.raw == "\\dfrac{6}{8}" and f.value == "3/4" and f.number == 0.75


@pytest.mark.parametrize("text", [
    None, "", "   \n ", "Answer:", "Let's think step by step.\nFirst, compute the area of the square.\n"
    "Then we subtract the circle and get the shaded part, which is what the question asks for.",
    "The mitochondria is the powerhouse of the cell because it makes ATP through oxidative phosphorylation "
    "in its inner membrane.", 42, float("nan"),
])
def test_extract_final_none(text):
    assert extract_final(text) is None


@pytest.mark.parametrize("s,x", [
    ("42", 42.0), ("-42", -42.0), ("+3", 3.0), ("1,234,567", 1234567.0), ("1,234.5", 1234.5),
    ("0.125", 0.125), (".5", 0.5), ("3/4", 0.75), ("-3/4", -0.75), ("\\frac{3}{4}", 0.75),
    ("\\dfrac{-3}{4}", -0.75), ("-\\tfrac{1}{2}", -0.5), ("\\frac12", 0.5), ("$\\frac{1}{2}$", 0.5),
    ("1.2e-3", 0.0012), ("1.2E+3", 1200.0), ("1.2 \\times 10^{-3}", 0.0012), ("1.2\\cdot10^{3}", 1200.0),
    ("1.2×10⁻³", 0.0012), ("12.5%", 12.5), ("12 m/s", 12.0), ("$18", 18.0), ("(5)", 5.0), ("−7", -7.0),
    ("１２", 12.0), ("1\\,000", 1000.0), ("1{,}000", 1000.0), ("3.", 3.0),
    ("x", None), ("1,23", None), ("3/0", None), ("2x", None), ("\\sqrt{2}", None), ("1 2", None),
    ("12 apples and 3 pears", None), ("", None), (None, None),
])
def test_normalize_number(s, x):
    got = normalize_number(s)
    assert got == pytest.approx(x) if x is not None else got is None


@pytest.mark.parametrize("s,out", [
    ("$x^{2} + 2x + 1$", "x^2+2x+1"),
    ("\\left( \\frac{1}{2} \\right)", "\\frac{1}{2}"),
    ("\\dfrac12", "\\frac{1}{2}"),
    ("\\sqrt3", "\\sqrt{3}"),
    ("\\text{cm}^{2}", "cm^2"),
    ("((a+b)).", "a+b"),
    ("(1, 2)", "(1,2)"),  # tuples and intervals keep their parentheses
    ("[0, 1)", "[0,1)"),
    ("(a)(b)", "(a)(b)"),
    ("\\pi r^2", "\\pi r^2"),  # a command and the next letter do not fuse
    ("\\(x\\)", "x"),
    ("2x+1", "2x+1"),  # no reordering
    ("", ""),
])
def test_normalize_expression(s, out):
    assert normalize_expression(s) == out


def test_percent_rule():
    # same written magnitude, or p/100 written as a non-integer -> consistent
    assert compare("25%", "25").verdict == "consistent"
    assert compare("25%", "1/4").verdict == "consistent"
    assert compare("25%", "0.25").verdict == "consistent"
    # p/100 is an integer: a proportion or a count? -> undecided
    assert compare("200%", "2").code == "percent_ambiguous"
    assert compare("25%", "30").verdict == "inconsistent"
    assert compare("25%", "25 %").verdict == "consistent"
    f = extract_final("12.5%")
    assert f is not None and f.value != extract_final("0.125").value  # kept distinct as values


def test_tolerances():
    assert compare("1000000", "1000000.9").verdict == "consistent"  # rel 1e-6
    assert compare("1000000", "1000002").verdict == "inconsistent"
    assert compare("0", "0.0000000001").verdict == "consistent"  # abs 1e-9
    assert compare("0", "0.00001").verdict == "inconsistent"


def test_compare_finals_and_verdict_fields():
    d, r = extract_final("#### 7"), extract_final("The answer is 7.")
    v = compare_finals(d, r)
    assert isinstance(v, Verdict) and v.draft == d and v.refined == r
    assert v.reason.startswith("number_match: ")


def test_compare_many_matches_compare_and_accepts_arrow_and_pandas():
    import pandas as pd
    import pyarrow as pa

    drafts = [c[0] for c in CASES]
    refineds = [c[1] for c in CASES]
    expected = [compare(d, r) for d, r in zip(drafts, refineds)]
    assert compare_many(drafts, refineds) == expected
    assert compare_many(pa.array(drafts, pa.string()), pa.array(refineds, pa.string())) == expected
    assert compare_many(pd.Series(drafts, dtype=object), pd.Series(refineds, dtype=object)) == expected
    with pytest.raises(ValueError):
        compare_many(["1"], [])


def test_deterministic_cache_and_process_independent():
    from boostqa.text import answers

    pairs = [(c[0], c[1]) for c in CASES]
    first = [compare(d, r) for d, r in pairs]
    answers._classify_cached.cache_clear()
    assert [compare(d, r) for d, r in reversed(pairs)] == first[::-1]  # order and cache state don't matter
    assert [compare(d, r) for d, r in pairs] == first
    # a fresh interpreter with another hash seed gives the same verdicts
    code = (
        "import json,sys\n"
        "from boostqa.text.answers import compare_many\n"
        "p=json.load(sys.stdin)\n"
        "print(json.dumps([[v.verdict, v.reason] for v in compare_many([a for a,_ in p],[b for _,b in p])]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps(pairs), env=env,
                         capture_output=True, text=True, check=True)
    assert json.loads(res.stdout) == [[v.verdict, v.reason] for v in first]


@pytest.mark.parametrize("text", [
    "The answer is" + " " * 200_000 + "5",
    "the answer is not clear. " * 20_000,
    "\\boxed{" * 20_000,
    "#### " * 50_000,
    "答案是" * 50_000,
    "Answer:" + "\n" * 200_000,
    "The answer is " + "1," * 100_000 + "5",
    "=" * 200_000,
    "İ" + "The answer is 5. " * 20_000,  # lower() changes the length: the regex-scan path
])
def test_pathological_inputs_stay_linear(text):
    t0 = time.perf_counter()
    extract_final(text)
    assert time.perf_counter() - t0 < 1.0


# ---------------------------------------------------------------- throughput (printed; loose floor)

def _synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Realistic mix: GSM8K solutions, chain-of-thought paragraphs, MCQ, boxed fractions, Chinese,
    units and percentages, free text; answers drawn from 1..5000 (many repeat, as in real data)."""
    rng = random.Random(seed)

    def gsm(a: int, b: int, ans: int) -> str:
        return (f"Natalia sold {a} clips in April and half as many in May.\n"
                f"In May she sold {a}/2 = <<{a}/2={a / 2}>>{a / 2} clips.\n"
                f"Altogether she sold {a}+{a / 2} = <<{a}+{a / 2}={a + a / 2}>>{a + a / 2} clips.\n"
                f"She also bought {b} more.\n#### {ans}")

    cot = ("Let's think step by step. The first leg is 120 km and the second is 80 km, so the total "
           "is 200 km. The time taken is 4 hours, hence the average speed is 200/4 = 50 km/h. ")
    out = []
    for _ in range(n):
        k, v = rng.randrange(8), rng.randint(1, 5000)
        w = v if rng.random() < 0.8 else v + 1
        if k == 0:
            out.append((gsm(rng.randint(2, 99), rng.randint(2, 99), v), gsm(rng.randint(2, 99), 7, w)))
        elif k == 1:
            out.append((f"The answer is ({'ABCD'[v % 4]}).", f"Checking each option, **Answer:** {'ABCD'[w % 4]}."))
        elif k == 2:
            out.append((f"$\\boxed{{\\frac{{{v}}}{{{v + 1}}}}}$", f"So it is \\boxed{{\\dfrac{{{w}}}{{{v + 1}}}}}."))
        elif k == 3:
            out.append((cot * 2 + f"Therefore, the answer is {v}.", f"{w:,} km"))
        elif k == 4:
            out.append((f"答案：{v}", f"所以答案是 {w}。"))
        elif k == 5:
            out.append((f"x = {v}", f"Solving gives x = {w / 10}e1"))
        elif k == 6:
            out.append(("The mitochondria is the powerhouse of the cell.",
                        "It produces ATP via oxidative phosphorylation."))
        else:
            out.append((f"{v / 10}%", f"The answer is {w / 1000}"))
    return out


def test_compare_many_throughput(capsys):
    from boostqa.text import answers

    pairs = _synthetic_pairs(100_000)
    drafts, refineds = [p[0] for p in pairs], [p[1] for p in pairs]
    answers._classify_cached.cache_clear()
    t0 = time.perf_counter()
    verdicts = compare_many(drafts, refineds)
    dt = time.perf_counter() - t0
    n = len(pairs)
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("consistent", "inconsistent", "undecided")}
    assert counts["consistent"] > counts["inconsistent"] > 0 and counts["undecided"] > 0
    with capsys.disabled():
        print(f"\n[throughput] compare_many over {n:,} pairs, 1 process: {n / dt:,.0f} rows/s "
              f"({dt / n * 1e6:.1f} us/row); {counts}")


@pytest.mark.parametrize("span,value,unit,number", [
    ("-1.5/3", "-0.5", None, -0.5),  # a decimal ratio is a float, not an exact fraction
    ("-6/8", "-3/4", None, -0.75),  # an integer ratio stays an exact, reduced fraction
    ("-2.5", "-2.5", None, -2.5),
    ("-1.2 \\times 10^{3}", "-1200", None, -1200.0),
    ("5cm", "5", "cm", 5.0),  # a known unit symbol may be glued to the digits
    ("1/2e3", None, None, None),  # an exponent on a ratio is not one number
    ("1.5/0.0", None, None, None),
    ("12% of it", None, None, None),  # nothing may follow a percentage
])
def test_number_forms_sign_and_tail(span, value, unit, number):
    f = extract_final(f"The answer is \\boxed{{{span}}}")
    if value is None:
        assert f.kind != "number" and normalize_number(span) is None
    else:
        assert (f.kind, f.value, f.unit, f.number) == ("number", value, unit, number)
        assert normalize_number(span) == number
