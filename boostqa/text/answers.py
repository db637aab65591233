"""Final-answer extraction and draft-vs-refined comparison (Spark-free, pure standard library).

In BoostQA a *refiner* model regenerates the answer of every synthesised question step by step,
and the item is kept as consistent only when the refined answer agrees with the generator's
draft. This module is the rule-based kernel of that check; an LLM judge is asked only when it
returns ``undecided``. Everything is plain Python over ``str`` with precompiled regexes (a few
microseconds per row), so it runs inside ``mapInPandas``/``mapInArrow`` on millions of rows.

Extraction (:func:`extract_final`)
----------------------------------
Candidates, newest (right-most) first; the first one that reads as a choice, number or
expression wins:

* ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces),
* ``#### 42`` (GSM8K),
* answer cues: "The (final/correct) answer is ...", "Answer: ...", "**Answer:** ...",
  "the correct option is ...", "答案是 / 答案为 / 答案：...", "故选 C"; the cue's tail runs to the
  end of the sentence (or the next line when the cue ends its line).

A prose tail that ends on "is/equals/gives <number or letter>" ("Answer: the total is 12.")
yields that value. Otherwise prose counts as a ``text`` answer only inside ``\\boxed{}`` or after
a cue on the text's last line ("The answer is Paris."). Without any candidate, a one-line answer
is classified as a whole ("42", "(C)", "C. Paris", "x = 4", "12 m/s", "Paris"); otherwise the
last sentence counts only if it ends in "= <number>" ("... = 12 m/s."), "is <number/letter>"
("So the probability is 0.5.") or is a bare number/option line. Anything else -> ``None``:
an answer mentioning several numbers without marking one is left to the judge.

Classification of a span: an option letter A-J ("C", "(C)", "(c)", "option C", "C) ...",
"C. text"); else a number; else an expression (math-looking, no prose words); else text.
``var = rhs`` (and ``= rhs`` / chains ``a = b = 12``) keep the right-hand side when the left is
a single variable or pure arithmetic, so "x = 4" is the number 4; an equation such as
``x^2+y^2=1`` stays an expression.

Numbers
-------
Signs (also U+2212), thousands separators ("1,234,567"; "1,23" is not a number), decimals,
fractions "3/4", ``\\frac{3}{4}``/``\\dfrac``/``\\tfrac``/``\\frac34``, scientific notation
"1.2e-3", ``1.2 \\times 10^{-3}``, "1.2×10⁻³", a leading currency sign, a trailing unit
("12 m/s", "5 cm^2", "30°", "12 apples", "42 个"; without a space only known unit symbols, so
"2x" stays an expression) and percentages.

``Final.value`` is canonical: integers as digits, fractions reduced ("6/8" -> "3/4"), decimals
in shortest round-trip form ("3.50" -> "3.5", "1.2e-3" -> "0.0012"). ``Final.number`` is the float.

**Percent rule.** A percentage keeps its written magnitude: "12.5%" has ``number == 12.5``,
``unit == "%"`` and ``value == "12.5%"``, distinct from "0.125" (``normalize_number("12.5%")``
is 12.5 too). When exactly one side is a percentage p% and the other a plain number x:
``x == p`` is consistent (the sign was dropped: "25%" vs "25"); ``x == p/100`` is consistent only
when x is written as a non-integer (fraction or decimal: "25%" vs "0.25" or "1/4"), because
"100%" vs "1" or "200%" vs "2" may be a count rather than a proportion -> undecided; any other
pair is inconsistent.

Comparison (:func:`compare`)
----------------------------
* choice vs choice: same letter -> consistent, else inconsistent;
* number vs number: ``math.isclose(rel_tol=1e-6, abs_tol=1e-9)`` -> consistent (units ignored;
  fraction vs decimal compares by value); different values -> inconsistent, except when both
  sides carry *different* units (a unit conversion, "1.2 km" vs "1200 m": undecided);
* expression vs expression: equal after :func:`normalize_expression` -> consistent, else
  undecided (equivalence needs algebra);
* text vs text: equal after case/space/punctuation folding -> consistent; yes/no (true/false,
  是/否) opposites -> inconsistent; otherwise undecided;
* a missing side or kinds that cannot be reconciled (choice vs number, number vs expression,
  anything vs text) -> undecided.

``Verdict.reason`` is ``"<code>: <detail>"``; the codes are the keys of :data:`REASONS`.

Cost: span classification is a pure function and is memoised (bounded LRU, short spans only),
since final answers repeat ("72", "C"); only the right-most few cues of each kind are examined and
tails/box bodies are length-capped, so megabyte or adversarial inputs stay linear.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Literal

__all__ = [
    "Final",
    "Verdict",
    "REASONS",
    "extract_final",
    "normalize_number",
    "normalize_expression",
    "compare",
    "compare_finals",
    "compare_many",
]

Kind = Literal["choice", "number", "expression", "text"]
Label = Literal["consistent", "inconsistent", "undecided"]

REASONS = {
    "choice_match": "both pick the same option letter",
    "choice_mismatch": "the option letters differ",
    "number_match": "the numbers are equal within rel 1e-6 / abs 1e-9 (units ignored)",
    "number_mismatch": "the numbers differ",
    "percent_match": "a percentage equals the other number (same magnitude, or p/100 written as a fraction/decimal)",
    "percent_ambiguous": "p% vs the integer p/100 (e.g. 100% vs 1): proportion or count?",
    "unit_mismatch": "the numbers differ but so do the units (may be a unit conversion)",
    "expression_match": "the expressions are equal after normalisation",
    "expression_differs": "the expressions differ textually; equivalence needs algebra",
    "text_match": "the short text answers are equal after folding",
    "text_opposite": "yes/no (true/false) answers disagree",
    "text_differs": "free-text answers differ; needs a judge",
    "kind_mismatch": "the two answers are of kinds the rules cannot reconcile",
    "no_final": "no final answer found on one or both sides",
}


@dataclass(frozen=True, slots=True)
class Final:
    """A final answer extracted from a solution text.

    ``value`` is the normalised form used for comparison, ``raw`` the matched span as written
    (units included), ``unit`` the stripped unit of a number ("m/s", "%", ...) and ``number``
    the float of a number (the written magnitude: 12.5 for "12.5%")."""

    kind: Kind
    value: str
    raw: str
    unit: str | None = None
    number: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: Label
    reason: str  # "<code>: <detail>", code in REASONS
    draft: Final | None = None
    refined: Final | None = None

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]


# --------------------------------------------------------------------------------------------
# span cleaning
# --------------------------------------------------------------------------------------------

_SUP = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻", "0123456789+-")
_SUP_RUN = re.compile(r"[⁺⁻]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
_TRANS = str.maketrans({
    "\u2212": "-", "\u2013": "-", "\u00d7": r"\times ", "\u00f7": r"\div ", "\u221a": r"\sqrt",
    "\u03c0": r"\pi ", "\u221e": r"\infty ", "\u2248": r"\approx ", "\u2264": r"\le ", "\u2265": r"\ge ",
    "\u2260": r"\ne ", "\uff0c": ",", "\uff1a": ":", "\uff08": "(", "\uff09": ")", "\uff05": "%",
    "\u3000": " ", "\u00a0": " ", "\u202f": "", "\u2009": "", "\u3002": ".",
})
_MATH_DELIMS = re.compile(r"\\\$|\$|\\[()\[\]]|\*\*")
_WRAPPERS = re.compile(
    r"\\(?:text|textbf|textit|textrm|textsf|texttt|mathrm|mathbf|mathit|mathsf|mbox|hbox|operatorname|boxed|fbox)"
    r"\s*\{([^{}]*)\}")
_LEFTRIGHT = re.compile(r"\\(?:left|right)\s*\.|\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])|\\displaystyle|\\!")
_THIN_THOUSANDS = re.compile(r"(?<=\d)(?:\\,|\{,\}|\\ |~)(?=\d{3}(?!\d))")
_SPACING = re.compile(r"\\[,;:> ]|\\q?quad(?![a-zA-Z])|~")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree(?![a-zA-Z])")
_WS = re.compile(r"\s+")


def _clean(s: str) -> str:
    """Unicode and LaTeX-markup folding of a short span (keeps spaces, single-spaced).

    Every rewrite is guarded by a substring test: most spans are plain ASCII ("72", "C")."""
    if not s.isascii():
        if _SUP_RUN.search(s):
            s = _SUP_RUN.sub(lambda m: "^{" + m.group(0).translate(_SUP) + "}", s)
        s = unicodedata.normalize("NFKC", s.translate(_TRANS))
    if "$" in s or "\\" in s or "**" in s:
        s = _MATH_DELIMS.sub("", s)
    if "\\" in s:
        if "{" in s and ("text" in s or "math" in s or "box" in s or "operatorname" in s):
            for _ in range(3):
                t = _WRAPPERS.sub(r"\1", s)
                if t == s:
                    break
                s = t
        if "\\left" in s or "\\right" in s or "ig" in s or "\\display" in s or "\\!" in s:
            s = _LEFTRIGHT.sub("", s)
        if "frac" in s:
            s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
        if "\\," in s or "\\ " in s or "\\;" in s or "\\:" in s or "\\>" in s or "quad" in s or "~" in s:
            s = _SPACING.sub(" ", _THIN_THOUSANDS.sub("", s))
    if "circ" in s or "degree" in s:
        s = _DEGREE.sub("°", s)
    if "{,}" in s:
        s = s.replace("{,}", ",")
    if "  " in s or "\t" in s or "\n" in s or "\r" in s:
        s = _WS.sub(" ", s)
    return s.strip()


def _strip_outer_parens(s: str) -> str:
    """'((x+1))' -> 'x+1'; '(1, 2)' and '(a)(b)' stay (top-level comma / not one group)."""
    while len(s) >= 2 and s[0] == "(" and s[-1] == ")":
        depth = 0
        for i, ch in enumerate(s):
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
                if depth == 0 and i != len(s) - 1:
                    return s
            elif ch == "," and depth == 1:
                return s
        s = s[1:-1].strip()
    return s


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------

_NUM = re.compile(r"""
    (?:[$€£¥₹]|USD|Rs\.?)?\s*
    (?P<sign>[-+]?)\s*
    (?:[$€£¥₹]\s*)?
    (?:
        \\frac\s*\{\s*(?P<fn>[-+]?\d+)\s*\}\s*\{\s*(?P<fd>[-+]?\d+)\s*\}
      | \\frac\s*(?P<fn1>\d)(?P<fd1>\d)(?!\d)
      | (?P<num>(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?|\.\d+)
        (?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?
        (?:[eE](?P<exp>[-+]?\d+)
          | \s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*(?:\{\s*(?P<exp2>[-+]?\d+)\s*\}|(?P<exp3>[-+]?\d+))
        )?
    )
    (?P<pct>\s*(?:\\?%|percent(?![a-zA-Z])|per\s?cent(?![a-zA-Z])))?
""", re.X)

_UNIT = re.compile(r"""\s*(?P<unit>
      °\s*[CFK]?
    | (?:(?:square|sq\.?|cubic|cu\.?)\s+)?
      [A-Za-zμΩÅ][A-Za-zμΩÅ0-9]*(?:\^\{?-?\d+\}?)?
      (?:\s*[/·*]\s*[A-Za-zμΩÅ]+(?:\^\{?-?\d+\}?)?)*
      (?:\s+per\s+[A-Za-z]+)?
    | [\u4e00-\u9fff]{1,3}(?:/[\u4e00-\u9fff]{1,3})?
)\s*[.,;:!?]*""", re.X)
_UNIT_HEAD = re.compile(r"[A-Za-zμΩÅ]+")
# unit symbols accepted when glued to the number ("5cm", "12m/s"); others ("2x", "3n") are algebra
_GLUED_UNITS = frozenset(
    "m cm mm km nm μm um s ms min h hr hrs g kg mg lb lbs oz L mL ml K V mV kV A mA W kW MW J kJ "
    "N kN Pa kPa MPa hPa atm bar Hz kHz MHz GHz mol mmol M mM C F Ω ohm ft in yd mi mph kph kmh cal "
    "kcal eV keV MeV GeV dB rad sr lm lx KB MB GB TB bit bits px USD yr yrs mo wk".split())
_PROSE = re.compile(r"\s+[A-Za-z]{2,}")


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def _parse_number(s: str, strict: bool) -> tuple[float, str, str | None] | None:
    """(number, canonical value, unit) for a span that *is* a number (+unit), else None.

    ``strict`` forbids trailing prose ("12 apples in total" is a number only when not strict)."""
    if s.isdigit() and s.isascii():  # fast path: a plain integer
        return float(int(s)), str(int(s)), None
    m = _NUM.match(s)
    if m is None:
        return None
    nv = _number_value(m)
    if nv is None:
        return None
    number, value = nv
    rest = s[m.end():]
    if m.group("pct"):  # a percentage takes no unit or prose after it
        return None if _has_tail(rest) else (number, value + "%", "%")
    ok, unit = _tail_unit(rest, strict)
    return (number, value, unit) if ok else None


def _number_value(m: re.Match) -> tuple[float, str] | None:
    """(number, canonical value) of a ``_NUM`` match, sign applied; None when it is not one finite
    number (a zero denominator, an exponent on a ratio "1/2e3", an overflow to inf)."""
    sign, fn, fd, fn1, fd1, num, den, exp, exp2, exp3, _ = m.groups()
    neg = sign == "-"
    if num is not None:
        r = _written_value(num.replace(",", "") if "," in num else num, den, exp or exp2 or exp3, neg)
    elif fn is not None:  # \frac{p}{q}
        r = _ratio(int(fn), int(fd), neg)
    else:  # \frac12
        r = _ratio(int(fn1), int(fd1), neg)
    return r if r is not None and math.isfinite(r[0]) else None


def _written_value(num: str, den: str | None, exp: str | None, neg: bool) -> tuple[float, str] | None:
    """A number written in digits: integer, decimal, ``a/b`` or with an exponent.

    Integer ratios stay exact fractions ("6/8" -> "3/4") so they compare by value, not by float."""
    if den is not None:
        if exp is not None:
            return None
        if "." in num or "." in den:
            d = float(den)
            return None if d == 0 else _signed(float(num) / d, neg)
        return _ratio(int(num), int(den), neg)
    if exp is not None:
        return _signed(float(f"{num}e{exp}"), neg)
    if "." in num:
        return _signed(float(num), neg)
    i = -int(num) if neg else int(num)
    return float(i), str(i)


def _ratio(p: int, q: int, neg: bool) -> tuple[float, str] | None:
    """p/q as (float, reduced fraction); None for q == 0."""
    if q == 0:
        return None
    if neg:
        p = -p
    return p / q, _frac(p, q)


def _signed(x: float, neg: bool) -> tuple[float, str]:
    """A float magnitude with its sign applied, and its canonical spelling."""
    if neg:
        x = -x
    return x, _fmt(x)


def _has_tail(rest: str) -> bool:
    """Whether text after the number is more than closing punctuation."""
    return bool(rest) and bool(rest.strip(" .,;:!?"))


def _tail_unit(rest: str, strict: bool) -> tuple[bool, str | None]:
    """(still a number?, unit) for the text after a number.

    A unit glued to the digits must be a known symbol ("5cm" yes, "2x" no: that is algebra);
    prose without digits is allowed only when not ``strict``."""
    if not _has_tail(rest):
        return True, None
    um = _UNIT.fullmatch(rest)
    if um is None:
        return not (strict or not _PROSE.match(rest) or any(c.isdigit() for c in rest)), None
    unit = um.group("unit").strip()
    if not rest[0].isspace() and unit[0] != "°" and not ("\u4e00" <= unit[0] <= "\u9fff"):
        head = _UNIT_HEAD.match(unit)
        if head is None or head.group(0) not in _GLUED_UNITS:
            return False, None
    return True, unit


def _frac(p: int, q: int) -> str:
    if q < 0:
        p, q = -p, -q
    g = math.gcd(p, q) or 1
    p, q = p // g, q // g
    return str(p) if q == 1 else f"{p}/{q}"


def normalize_number(s: str | None) -> float | None:
    """The value of a number written in ``s`` ("1,234.5", "-3/4", "\\frac{3}{4}", "1.2e-3",
    "1.2 \\times 10^{-3}", "12 m/s" -> 12.0), or None when ``s`` is not a single number.
    A percentage returns its written magnitude: "12.5%" -> 12.5 (see the module's percent rule)."""
    if not s:
        return None
    t = _strip_outer_parens(_clean(s)).rstrip(".")
    r = _parse_number(t, strict=True)
    return None if r is None else r[0]


# --------------------------------------------------------------------------------------------
# expressions and text
# --------------------------------------------------------------------------------------------

_FRAC_DIGITS = re.compile(r"\\frac(\d)(\d)")
_SQRT_BARE = re.compile(r"\\sqrt(\w)")
_SINGLE_BRACE = re.compile(r"([\^_])\{(\\?\w)\}")
_CMD_SPACE = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])")


def _norm_expr_clean(s: str) -> str:
    """normalize_expression for an already cleaned span."""
    if " " in s:
        if "\\" in s:  # "\pi r" must not fuse into "\pir": keep one space after a command
            s = _CMD_SPACE.sub("\\1\x00", s).replace(" ", "").replace("\x00", " ")
        else:
            s = s.replace(" ", "")
    if "\\" in s:
        s = _FRAC_DIGITS.sub(r"\\frac{\1}{\2}", s)
        s = _SQRT_BARE.sub(r"\\sqrt{\1}", s)
    if "{" in s:
        s = _SINGLE_BRACE.sub(r"\1\2", s)
    s = s.rstrip(".,;:")
    return _strip_outer_parens(s)


def normalize_expression(s: str | None) -> str:
    """Canonical text of a math expression: no spaces, ``$``, ``\\(``/``\\[``, ``\\left``/
    ``\\right``, ``\\text{}``-style wrappers, spacing commands or trailing periods; ``\\dfrac`` ->
    ``\\frac``, ``\\frac12`` -> ``\\frac{1}{2}``, ``x^{2}`` -> ``x^2``; outer parentheses dropped
    unless they hold a top-level comma (tuples/intervals keep them). No reordering."""
    if not s:
        return ""
    return _norm_expr_clean(_clean(s))


_CMD = re.compile(r"\\[a-zA-Z]+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_WORD = re.compile(r"[A-Za-z]{2,}")
_MATHCHAR = re.compile(r"[\d\\^_{}=+*/<>]")
_MATH_WORDS = frozenset(
    "sqrt sin cos tan cot sec csc log ln lg exp lim max min gcd lcm arcsin arccos arctan sinh cosh "
    "tanh det mod pmod infty inf dx dy dt".split())
_NOT_SYMBOLS = frozenset("no is an of or to it in on at be as by if so we he me my us do go up".split())


def _is_mathy(s: str) -> bool:
    if len(s) > 160 or (not s.isascii() and _CJK.search(s)):
        return False
    bare = _CMD.sub(" ", s) if "\\" in s else s
    for w in _WORD.findall(bare):
        lw = w.lower()
        if lw in _MATH_WORDS:
            continue
        if len(w) <= 3 and (w.isupper() or (len(w) <= 2 and lw not in _NOT_SYMBOLS and _MATHCHAR.search(s))):
            continue  # AB, ABC (geometry), xy in "2xy+1"
        return False
    if _MATHCHAR.search(s):
        return True
    t = s.replace(" ", "")  # "x", "AB": a symbol, unless an English short word ("no", "is")
    return 0 < len(t) <= 3 and t.isascii() and t.isalpha() and t.lower() not in _NOT_SYMBOLS


_TEXT_STRIP = " \t.,;:!?\"'`*()[]"
_YES = frozenset({"yes", "true", "correct", "是", "对", "正确"})
_NO = frozenset({"no", "false", "incorrect", "否", "不是", "错", "错误", "不正确"})


def _norm_text(s: str) -> str:
    s = s.lower()
    if "  " in s or "\t" in s or "\n" in s:
        s = _WS.sub(" ", s)
    return s.strip(_TEXT_STRIP)


# --------------------------------------------------------------------------------------------
# classification of a span
# --------------------------------------------------------------------------------------------

_CHOICE = re.compile(r"""(?:(?i:option|choice|answer)\s*)?
    (?: \((?P<a>[A-Ja-j])\) | \[(?P<b>[A-Ja-j])\] | (?P<c>[A-J])(?![A-Za-z0-9_'’\-+=^/]) )
""", re.X)
_INEQ = re.compile(r"[<>!]=|=[<>]|\\(?:le|ge|ne|neq|leq|geq)(?![a-zA-Z])")
_VAR = re.compile(r"(?:[A-Za-z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\([A-Za-z]\))?")
_LETTER = re.compile(r"[A-Za-z]")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:[1-9]\d{0,15}|0)(?:\.\d+)?")


def _choice_rest_ok(rest: str, bare: bool, strict: bool) -> bool:
    r = rest.strip()
    if not r or not r.strip(".:)]*,;!"):
        return True
    if strict:
        return False
    if r[0] in ".:)],;" or r[0] == "-" and not bare:
        return True
    return not bare and r[0].isspace()


def _classify_span(span: str, strict: bool = False) -> Final | None:
    raw = span.strip()
    if _PLAIN_NUMBER.fullmatch(raw) is not None:  # fast path: "72", "-3", "0.125"
        x = float(raw)
        return Final("number", _fmt(x) if "." in raw else str(int(raw)), raw, None, x)
    s = _clean(raw)
    if not s:
        return None
    m = _CHOICE.match(s)
    if m is not None:
        letter = m.group("a") or m.group("b") or m.group("c")
        rest = s[m.end():]
        if _choice_rest_ok(rest, m.group("c") is not None, strict) or (
                not strict and m.group("c") is None and rest[:1] == " "):
            return Final("choice", letter.upper(), raw)
    s = _strip_outer_parens(s.rstrip(" .,;:!?")) if s[-1] in " .,;:!?)" else s
    if not s:
        return None
    if "\\approx" in s:
        s = s.replace("\\approx", "=")
    if "=" in s and not _INEQ.search(s):
        parts = s.split("=")
        lhs, rhs = parts[0].strip(), parts[-1].strip()
        if rhs and not any("," in p or " or " in p or " and " in p for p in parts[1:-1]):
            if _VAR.fullmatch(lhs) or not lhs or (
                    not _LETTER.search(_CMD.sub("", lhs)) and not any("," in p for p in parts)):
                s = _strip_outer_parens(rhs)
    r = _parse_number(s, strict)
    if r is not None:
        return Final("number", r[1], raw, r[2], r[0])
    if strict:
        return None
    if _is_mathy(s):
        e = _norm_expr_clean(s)
        return Final("expression", e, raw) if e else None
    t = _norm_text(s)
    return Final("text", t, raw) if t else None


# Pure function returning an immutable Final, so cached: final-answer spans repeat heavily ("72",
# "C", "\\frac{1}{2}"). Bounded in entries and (short spans only) in memory; lru_cache is thread-safe.
_classify_cached = lru_cache(maxsize=1 << 16)(_classify_span)
_CACHE_MAX_SPAN = 64


def _classify(span: str, strict: bool = False) -> Final | None:
    if len(span) <= _CACHE_MAX_SPAN:
        return _classify_cached(span, strict)
    return _classify_span(span, strict)


# --------------------------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------------------------

_CUE_EN_BODY = r"""[ \t]*(?:\*\*|\*)?[ \t]*
    (?:(?:is|are|would\s+be|should\s+be|will\s+be|must\s+be|becomes|=|equals)
       (?:[ \t]*(?:therefore|thus|then|indeed|clearly|simply|just|actually|now|:))*
     | [:：]
    )[ \t]*(?:\*\*|\*)?[ \t]*"""
# matched at a position found by str.find on the lower-cased text (fast), or scanned (fallback)
_CUE_EN_AT = re.compile(r"(?:answer|option|choice)" + _CUE_EN_BODY, re.X)
_CUE_EN_SCAN = re.compile(r"(?:answer|option|choice)" + _CUE_EN_BODY, re.X | re.I)
_CUE_WORDS = ("answer", "option", "choice")
_CUE_ZH = re.compile(r"""
    (?:答案|答)[ \t]*(?:应该是|应为|應為|应是|是|为|為|选|選)?[ \t]*[:：]?[ \t]*
  | (?:故|所以|因此|则|則|应|應)(?:本题)?(?:选|選)(?:择|擇)?[ \t]*[:：]?[ \t]*
""", re.X)
_GSM = re.compile(r"####[ \t]*")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_BRACES = re.compile(r"\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
# where a cue's tail stops: sentence punctuation followed by a space (not the "." of "3.5"),
# Chinese commas, ", which/so/because ...", " because/since/as ..."
_CUT_PUNCT = re.compile(r"[.!?;。；！？，、]")
_CUT_COMMA = re.compile(
    r",\s*(?=(?:which|so|since|because|as|and|but|or|then|that|where|giving|meaning|thus|hence|therefore|i\.e)\b)")
_CUT_WORD = re.compile(r"\s(?:because|since|as|which|so that|so|where|given)\b")
_NONSPACE = re.compile(r"\S")
_SENTENCE_END = re.compile(r"[.!?。！？]\s+(?=\S)")
# "So the probability is 0.5." at the very end; tried only when the sentence has a digit or a
# lone capital A-J (the value must read as a number or an option letter)
_IS_VALUE = re.compile(
    r"\s(?:is|are|was|were|equals|equal\s+to|be|becomes|gives|get|makes|total\s+of)\s+(?!not\b)(\S.{0,40}?)[\s.!。]*$")
_VALUE_HINT = re.compile(r"\d|(?<![A-Za-z])[A-J](?![A-Za-z])")
# work bounds: a pathological text (megabytes, thousands of cues) stays linear
_MAX_PER_KIND = 8  # only the right-most occurrences of each cue kind are looked at
_MAX_FIND = 64  # str.find hits of a cue word tried per text
_MAX_TAIL = 300  # characters of a cue's tail
_MAX_BOX = 2000  # characters of a \boxed{...} body


def _cut(span: str) -> str:
    """The span up to its first sentence end (three simple regexes: faster than one alternation)."""
    end = len(span)
    m = _CUT_PUNCT.search(span)
    while m is not None:
        k = m.end()
        if m.group() in "，、" or k == end or span[k].isspace() or span[k] == "*":
            end = m.start()
            break
        m = _CUT_PUNCT.search(span, k)
    if "," in span:
        m = _CUT_COMMA.search(span, 0, end)
        if m is not None:
            end = m.start()
    m = _CUT_WORD.search(span, 0, end)
    if m is not None:
        end = m.start()
    return span[:end].rstrip() if end < len(span) else span


def _brace_body(text: str, j: int) -> str | None:
    """Content of the brace group opening at text[j] == '{' (nested), or None if unclosed."""
    stop = min(len(text), j + _MAX_BOX)
    m = _BRACES.match(text, j, stop)  # up to three levels in C; deeper nesting takes the loop
    if m is not None:
        return m.group(1)
    depth = 0
    for k in range(j, stop):
        ch = text[k]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1:k]
    return None


def _tail(text: str, end: int, cut: bool) -> tuple[str, bool, bool] | None:
    """The cue's tail: (span, on the cue's own line, the line ends the text), or None if nothing
    follows."""
    n = len(text)
    eol = text.find("\n", end)
    if eol == -1:
        eol = n
    tail = text[end:min(eol, end + _MAX_TAIL)]
    same = True
    if not tail.strip(" \t*:"):  # "Answer:\nC": the next non-empty line
        same = False
        while True:
            if eol >= n:
                return None
            m = _NONSPACE.search(text, eol)
            if m is None:
                return None
            start = text.rfind("\n", eol, m.start()) + 1
            eol = text.find("\n", m.start())
            if eol == -1:
                eol = n
            tail = text[start:min(eol, start + _MAX_TAIL)]
            if tail.strip(" \t$*:\\[]`"):  # skip "$$" / "\\[" / "```" lines around display math
                break
    if cut:
        tail = _cut(tail)
    return tail, same, _NONSPACE.search(text, eol) is None


def _last(it: Iterable[re.Match]) -> deque[re.Match]:
    return deque(it, maxlen=_MAX_PER_KIND)


def _candidates(text: str) -> list[tuple[int, str, bool, bool]]:
    """(position, span, same line, text may count), newest first. A prose span counts as a text
    answer only from a \\boxed{} or from a cue on the text's last line, on the cue's own line."""
    out: list[tuple[int, str, bool, bool]] = []
    if "\\boxed" in text or "\\fbox" in text:
        for m in _last(_BOXED.finditer(text)):
            j = m.end()
            if j < len(text) and text[j] == "{":
                body = _brace_body(text, j)
                if body is not None:
                    out.append((m.start(), body, True, True))
            else:
                tok = text[j:j + 40].split(None, 1)
                if tok:
                    out.append((m.start(), tok[0].rstrip("$.,"), True, True))
    if "####" in text:
        for m in _last(_GSM.finditer(text)):
            t = _tail(text, m.end(), cut=False)
            if t is not None:
                out.append((m.start(), *t))
    low = text.lower()
    if len(low) == len(text):  # one char per char: positions in `low` are positions in `text`
        for word in _CUE_WORDS:
            i, found, tried = low.rfind(word), 0, 0
            while i != -1 and found < _MAX_PER_KIND and tried < _MAX_FIND:
                tried += 1
                m = _CUE_EN_AT.match(low, i)
                if m is not None:
                    t = _tail(text, m.end(), cut=True)
                    if t is not None:
                        out.append((i, *t))
                        found += 1
                i = low.rfind(word, 0, i)
    else:
        for m in _last(_CUE_EN_SCAN.finditer(text)):
            t = _tail(text, m.end(), cut=True)
            if t is not None:
                out.append((m.start(), *t))
    if not text.isascii() and ("答" in text or "选" in text or "選" in text):  # isascii() is O(1)
        for m in _last(_CUE_ZH.finditer(text)):
            t = _tail(text, m.end(), cut=True)
            if t is not None:
                out.append((m.start(), *t))
    if len(out) > 1:
        out.sort(key=lambda c: c[0], reverse=True)
    return out


def _is_value(sentence: str) -> Final | None:
    """The number/option a sentence ends on after "is/equals/gives ...", else None."""
    if _VALUE_HINT.search(sentence) is None:
        return None
    m = _IS_VALUE.search(sentence)
    if m is None:
        return None
    f = _classify(m.group(1), strict=True)
    return f if f is not None and f.kind in ("number", "choice") else None


def extract_final(text: str | None) -> Final | None:
    """The final answer stated in ``text`` (the right-most one), or None; see the module doc."""
    if not text or not isinstance(text, str):
        return None
    text_final = None
    for _pos, span, same, text_ok in _candidates(text):
        f = _classify(span)
        if f is None:
            continue
        if f.kind != "text":
            return f
        g = _is_value(f.raw)  # "Answer: the total is 12."
        if g is not None:
            return g
        if text_final is None and same and text_ok and len(f.value) <= 100:
            text_final = f
    if text_final is not None:
        return text_final
    stripped = text.strip()
    if not stripped:
        return None
    whole = None
    if "\n" not in stripped:
        last = stripped
        if len(stripped) <= 100 and stripped[-1] not in ":：":  # "Answer:" with nothing after
            whole = _classify(_cut(stripped))
            if whole is not None and whole.kind != "text":
                return whole
    else:
        last = stripped[stripped.rfind("\n") + 1:].strip()
    if len(last) > _MAX_TAIL:
        last = last[-_MAX_TAIL:]
    m = None
    for m in _SENTENCE_END.finditer(last):
        pass
    if m is not None:  # the last sentence of the last line
        last = last[m.end():]
    last = _cut(last).strip()
    if "=" in last:  # "... = 12 m/s."
        f = _classify(last[last.rfind("=") + 1:], strict=True)
        if f is not None:
            return f
    else:
        f = _is_value(last)  # "So the probability is 0.5."
        if f is not None:
            return f
        if len(last) <= 40 and whole is None:  # a bare "42" / "(C)" line
            f = _classify(last, strict=True)
            if f is not None and f.kind in ("number", "choice"):
                return f
    return whole


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------

def _close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)


def _compare_numbers(d: Final, r: Final) -> Verdict:
    x, y = d.number, r.number
    assert x is not None and y is not None
    dp, rp = d.unit == "%", r.unit == "%"
    if dp == rp:
        if _close(x, y):
            return Verdict("consistent", f"number_match: {d.value} ~ {r.value}", d, r)
        if d.unit and r.unit and not dp and d.unit.replace(" ", "") != r.unit.replace(" ", ""):
            return Verdict("undecided", f"unit_mismatch: {d.raw} vs {r.raw}", d, r)
        return Verdict("inconsistent", f"number_mismatch: {d.value} vs {r.value}", d, r)
    p, q = (d, r) if dp else (r, d)
    pv, qv = p.number, q.number
    assert pv is not None and qv is not None
    if _close(pv, qv):
        return Verdict("consistent", f"percent_match: {p.value} ~ {q.value}", d, r)
    if _close(pv / 100.0, qv):
        if not qv.is_integer():
            return Verdict("consistent", f"percent_match: {p.value} ~ {q.value}", d, r)
        return Verdict("undecided", f"percent_ambiguous: {p.value} vs {q.value}", d, r)
    return Verdict("inconsistent", f"number_mismatch: {d.value} vs {r.value}", d, r)


def compare_finals(d: Final | None, r: Final | None) -> Verdict:
    """Compare two already extracted finals (see :func:`compare`)."""
    if d is None or r is None:
        side = "both" if d is None and r is None else ("draft" if d is None else "refined")
        return Verdict("undecided", f"no_final: {side}", d, r)
    if d.kind != r.kind:
        return Verdict("undecided", f"kind_mismatch: {d.kind} vs {r.kind}", d, r)
    if d.kind == "choice":
        if d.value == r.value:
            return Verdict("consistent", f"choice_match: {d.value}", d, r)
        return Verdict("inconsistent", f"choice_mismatch: {d.value} vs {r.value}", d, r)
    if d.kind == "number":
        return _compare_numbers(d, r)
    if d.kind == "expression":
        if d.value == r.value:
            return Verdict("consistent", f"expression_match: {d.value}", d, r)
        return Verdict("undecided", f"expression_differs: {d.value} vs {r.value}", d, r)
    if d.value == r.value:
        return Verdict("consistent", f"text_match: {d.value}", d, r)
    if (d.value in _YES and r.value in _NO) or (d.value in _NO and r.value in _YES):
        return Verdict("inconsistent", f"text_opposite: {d.value} vs {r.value}", d, r)
    return Verdict("undecided", f"text_differs: {d.value[:60]} vs {r.value[:60]}", d, r)


def compare(draft: str | None, refined: str | None) -> Verdict:
    """Draft answer vs refined answer: consistent / inconsistent / undecided (ask a judge)."""
    return compare_finals(extract_final(draft), extract_final(refined))


def compare_many(drafts: Iterable[str | None], refineds: Iterable[str | None]) -> list[Verdict]:
    """:func:`compare` over aligned sequences (lists, pandas Series, Arrow ``to_pylist()``)."""
    drafts = drafts.to_pylist() if hasattr(drafts, "to_pylist") else list(drafts)  # Arrow: str, not scalars
    refineds = refineds.to_pylist() if hasattr(refineds, "to_pylist") else list(refineds)
    if len(drafts) != len(refineds):
        raise ValueError(f"drafts ({len(drafts)}) and refineds ({len(refineds)}) differ in length")
    return [compare_finals(extract_final(d), extract_final(r)) for d, r in zip(drafts, refineds)]
