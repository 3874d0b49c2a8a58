"""Equation citations and symbols stay consistent with ``logattn_ref.notation`` everywhere a learner reads.

Scanned: every cell (markdown and code) of notebooks/, solutions/ and exercises/, every module of
logattn_ref/, README.md and benchmarks/README.md. Checked:

- every "eq. N" / "eqs. N-M" / "equation (N)" cites an equation that exists in the paper version the course
  cites, and names what it cites: a keyword of that equation's topic (``notation.EQUATIONS``) stands in the
  same sentence or line;
- no other arXiv version of the paper is cited, so there is one set of numbers;
- ``S`` is the numerator, never the state (the state is H^(S), exp(H^(S)) in linear space);
- lesson 2 holds the notation table exactly as ``notation.markdown_table()`` renders it.

The checks themselves are tested on known-good and known-bad sentences, so a check that cannot fail fails here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from logattn_ref import notation

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- the checks

# "eq. 5", "Eq. (5)", "eqs. 5-6", "eqs. (3)–(4)", "equations 5 and 6", "eqs. 5, 6 and 7", "equation 7".
_CITATION = re.compile(
    r"\b(?:eqs?\b\.?|equations?\b)\s*\(?\s*"
    r"(?P<nums>\d+\)?(?:\s*(?:[-–—,&]|and\b|to\b)\s*\(?\d+\)?)*)",
    re.IGNORECASE,
)
_NUMBER_OR_DASH = re.compile(r"\d+|[-–—]|\bto\b")

# Sentence ends: ". " etc. except after an abbreviation (eq., eqs., e.g., i.e., cf., vs., Fig.), a blank line,
# a new list item, heading or table row. The context of a citation is its sentence plus the lines it touches,
# capped on each side so that a long docstring without full stops does not count as one sentence.
_ABBREVIATION = re.compile(r"(?:\beqs?|\be\.g|\bi\.e|\bcf|\bvs|\bfig|\bapprox|\betc)$", re.IGNORECASE)
_BOUNDARY = re.compile(r"[.!?](?=\s)|\n[ \t]*\n|\n(?=[ \t]*(?:[-*+] |\d+\. |#|\|))")
_CAP = 300

_KEYWORDS = {e.number: [re.compile(k, re.IGNORECASE) for k in e.keywords] for e in notation.EQUATIONS.values()}
_CONFLICTS = {e.number: [re.compile(k, re.IGNORECASE) for k in e.conflicts] for e in notation.EQUATIONS.values()}
_UNLESS = {e.number: [re.compile(k, re.IGNORECASE) for k in e.conflict_unless] for e in notation.EQUATIONS.values()}

# Another version of the paper: "arXiv:2404.05843v2", "v2 of the paper", "the paper (v3)", "follow v2".
_OTHER_VERSION = re.compile(
    r"2404\.05843\s*v(?P<a>\d+)"
    r"|(?:arxiv|2404\.05843|paper|preprint|heinsen|numbers follow|revision)[^\n]{0,40}?\b(?:v|version\s*)(?P<b>\d+)\b"
    r"|\bv(?P<c>\d+)\b(?:\s+of)?[^\n]{0,15}?(?:arxiv|2404\.05843|paper|preprint|heinsen)",
    re.IGNORECASE,
)

# S used for the state. S is the numerator sum_j (exp(q_i)·exp(k_j)) v_j: a sum over keys of a key-only
# term (no q), a recurrence over t, a d_k x d_v shape or the word "state" next to it makes it the state.
_S = r"(?<![\w(^{\\])S"  # not H^(S), H^{(S)}, \mathbf{S}, log_S, ...
_KEY_FEATURE = r"(?:exp|φ|phi|\\phi|\\exp|e\^|np\.exp|torch\.exp)\s*[\\({\s]*(?:mathbf\{)?k"
_STATE_S_PATTERNS = {
    "S defined as a sum over keys of exp(k_j) v_j (that is the state exp(H^(S)); S is the numerator)": re.compile(
        _S + r"(?:_\S*?)?\s*(?::=|=|←|\\leftarrow|\\gets|\+=)[^=\nqQ]{0,60}?" + _KEY_FEATURE
    ),
    "S called the state (the state is H^(S), or exp(H^(S)) in linear space)": re.compile(
        r"\b[Ss]tates?\b(?:\s+is)?\s*[(:=,$`\s]*(?:\\?log\s*)?(?<![\w^{\\])S(?![A-Za-z(^])"
        r"|" + _S + r"\$?`?\s+states?\b"
        r"|" + _S + r"\s*[,(]\s*the\s+(?:\w+\s+)?state\b"
        r"|\bthe\s+S\s+state\b"
        r"|\(\s*S\s*,\s*Z\s*\)\s+(?:is|are|as)\s+(?:a|an|the)\s+(?:[\w-]+\s+){0,3}state"
    ),
    "S_t = S_{t-1} + ... (a recurrence on S; the recurrence is on H^(S), eq. 6)": re.compile(
        _S + r"_\{?t\}?\s*(?:=|:=|←|\\leftarrow|\\gets)\s*[^=\n]{0,30}?(?<![\w(^{\\])S_\{?t\s*-\s*1\}?"
        r"|\\?log\s*S(?:_\{?t\}?)?\s*(?:←|\\leftarrow|\\gets|=)\s*[^=\n]{0,30}?\\?log\s*S(?:_\{?t\s*-\s*1\}?)?\b"
    ),
    "S with shape d_k x d_v (that shape is the state H^(S); the numerator S is d_v)": re.compile(
        r"(?<![\w(^{\\])(?:\\?log\s*)?S\b`?\s*(?:\$|`)?[(:\s]*`?\[?[^\n\]]{0,8}?d_k\s*(?:x|×|\\times|,)\s*d_v"
    ),
    "log S defined by an LSE over keys alone (that is H^(S); log S = LSE_f(Q + H^(S)), eqs. 3-5)": re.compile(
        r"\\?log\s*S(?:_\{?t\}?)?\s*=\s*(?:\\mathrm\{)?(?:LSE|LCSE|logsumexp|logcumsumexp)\}?_\{?(?:j|n|\[n)"
    ),
}


@dataclass(frozen=True)
class Finding:
    where: str
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.why}\n    ...{self.text}..."


def cited_numbers(nums: str) -> list[int]:
    """'5-6' -> [5, 6]; '3, 4 and 7' -> [3, 4, 7]; '(3)–(4)' -> [3, 4]."""
    tokens = _NUMBER_OR_DASH.findall(nums)
    out: list[int] = []
    i = 0
    while i < len(tokens):
        a = int(tokens[i])
        if i + 2 < len(tokens) and not tokens[i + 1].isdigit() and tokens[i + 2].isdigit():
            b = int(tokens[i + 2])
            out += list(range(a, b + 1)) if a <= b <= a + 14 else [a, b]
            i += 3
        else:
            out.append(a)
            i += 1 + (i + 1 < len(tokens) and not tokens[i + 1].isdigit())
    return out


def citation_context(text: str, start: int, end: int) -> str:
    """The sentence around text[start:end] together with the lines it touches, at most _CAP chars each side."""
    lo = text.rfind("\n", 0, start) + 1
    hi = text.find("\n", end)
    hi = len(text) if hi < 0 else hi
    sentence_lo, sentence_hi = max(0, start - _CAP), min(len(text), end + _CAP)
    for m in _BOUNDARY.finditer(text, sentence_lo, start):
        if m.group().startswith((".", "!", "?")) and _ABBREVIATION.search(text[max(0, m.start() - 8):m.start()]):
            continue
        sentence_lo = m.end()
    for m in _BOUNDARY.finditer(text, end, sentence_hi):
        if m.group().startswith((".", "!", "?")) and _ABBREVIATION.search(text[max(0, m.start() - 8):m.start()]):
            continue
        sentence_hi = m.start()
        break
    return text[min(lo, sentence_lo):max(hi, sentence_hi)]


def check_citations(text: str, where: str) -> list[Finding]:
    """A finding for every cited equation number that does not exist or has none of its topic's words near."""
    findings = []
    for m in _CITATION.finditer(text):
        context = citation_context(text, m.start(), m.end())
        line_no = text.count("\n", 0, m.start()) + 1
        for number in cited_numbers(m.group("nums")):
            equation = notation.EQUATIONS.get(number)
            if equation is None:
                why = f"cites eq. {number}, which {notation.PAPER_VERSION} does not have"
            elif not any(k.search(context) for k in _KEYWORDS[number]):
                why = (f"cites eq. {number} ({equation.summary}) but says nothing of it in the same sentence "
                       f"or line (keywords: notation.EQUATIONS[{number}].keywords)")
            elif any(c.search(context) for c in _CONFLICTS[number]) and not any(
                u.search(context) for u in _UNLESS[number]
            ):
                why = f"cites eq. {number} ({equation.summary}) for something else: {equation.conflict_reason}"
            else:
                continue
            findings.append(Finding(f"{where}, line {line_no}", m.group(0) + "  in  " + _squash(context), why))
    return findings


def check_version(text: str, where: str) -> list[Finding]:
    findings = []
    for m in _OTHER_VERSION.finditer(text):
        version = m.group("a") or m.group("b") or m.group("c")
        if version != "1":
            line_no = text.count("\n", 0, m.start()) + 1
            findings.append(Finding(f"{where}, line {line_no}", _squash(m.group(0)),
                                    f"cites v{version} of the paper; the course cites {notation.PAPER_VERSION} only"))
    return findings


def check_state_symbol(text: str, where: str) -> list[Finding]:
    findings = []
    for why, pattern in _STATE_S_PATTERNS.items():
        for m in pattern.finditer(text):
            line_no = text.count("\n", 0, m.start()) + 1
            lo, hi = max(0, m.start() - 40), min(len(text), m.end() + 40)
            findings.append(Finding(f"{where}, line {line_no}", _squash(text[lo:hi]), why))
    return findings


def check_text(text: str, where: str = "<text>") -> list[Finding]:
    return check_citations(text, where) + check_version(text, where) + check_state_symbol(text, where)


def _squash(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------- the corpus


def _notebook_cells(path: Path) -> list[tuple[int, str, str]]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, c["cell_type"], "".join(c["source"])) for i, c in enumerate(cells)]


def scanned_texts() -> list[tuple[str, str]]:
    """(where, text) for every place a learner reads: cells, library modules, READMEs."""
    texts = []
    for folder in ("notebooks", "solutions", "exercises"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            for i, cell_type, source in _notebook_cells(path):
                texts.append((f"{folder}/{path.name} cell {i} ({cell_type})", source))
    for path in sorted((ROOT / "logattn_ref").rglob("*.py")):
        texts.append((str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")))
    for name in ("README.md", "benchmarks/README.md"):
        path = ROOT / name
        if path.exists():
            texts.append((name, path.read_text(encoding="utf-8")))
    return texts


def _report(findings: list[Finding]) -> str:
    return f"{len(findings)} finding(s):\n" + "\n".join(str(f) for f in findings)


# ---------------------------------------------------------------------------------------------- the data


def test_equation_list_is_v1():
    assert notation.PAPER_VERSION == "arXiv:2404.05843v1"
    assert sorted(notation.EQUATIONS) == list(range(1, 15)), "v1 numbers its equations (1) to (14)"
    for number, equation in notation.EQUATIONS.items():
        assert equation.number == number and equation.summary and equation.keywords


def test_markdown_table_has_every_symbol():
    table = notation.markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(notation.SYMBOLS)
    for row, symbol in zip(rows, notation.SYMBOLS):
        assert symbol.symbol in row and row.count(" | ") == 2, row
    assert notation.PAPER_VERSION in table
    assert all(f"({n})" in notation.equations_markdown() for n in notation.EQUATIONS)


# ---------------------------------------------------------------------------------------------- the checks fail on errors

GOOD_SENTENCES = [
    "The definition (eq. 1): softmax over keys of s_ij = log(exp(q_i) . exp(k_j)).",
    "the normaliser: log Y = log S - log Z (eq. 2)",
    "The log-space form, non-causal and causal (eqs. 3-4), needs V > 0.",
    "The paper's log-space form (eqs. 3–4) for V > 0: returns log Y.",
    "non-causal (eq. 3): an LSE over all keys",
    "The causal form (eq. 4) takes a cumulative LSE over j <= i.",
    "causal: the LSE over keys must be cumulative over j <= i (eq. 4)",
    "Read one token at a time, it is a recurrence on the states H^(S), H^(Z) (eqs. 5-6).",
    "Consume one token (the recurrent form, eqs. 5-6): constant work and memory.",
    "The paper's initial state (eq. 7) is a log-space zero: a phantom token.",
    "The empty state H_0 = -inf, not the paper's zeros (eq. 7).",
    "The recurrence (eqs. 5-6) from the initial state (eq. 7).",
    "In the non-autoregressive case all queries read the updated states (eq. 8).",
    "S and Z are the numerator and denominator (eq. 13).",
    "Heinsen, arXiv:2404.05843v1 (equation numbers follow v1).",
    "The later abstract (arXiv:2404.05843, revised) claims an infinite-dimensional feature function.",
    "The causal form (eq. 4) is the non-causal eq. 3 with LCSE in place of the inner LSE.",
    "| `log_attention_logspace(q, k, log_v, causal=True)` | the paper's log-space form (eqs. 3–4), V > 0 |",
]

BAD_SENTENCES = [
    "the recurrent form (eqs. 7-8)",
    "Step 8. The recurrent form (eqs. 7-8)",
    "non-causal (eqs. 3-4)",
    "the non-causal log-space form (eqs. 3-4)",
    "Causal: a cumulative log-sum-exp (eqs. 5-6)",
    "The paper's log-space form (eqs. 3-6) for V > 0.",
    "Causal attention in log space (eqs. 3-6, V > 0)",
    "Causal attention in log space (eqs. 3-4)",
    "you forgot the normaliser: log Y = log S - log Z (eq. 4)",
    "Read eqs. 5-6 one token at a time and they become a recurrence (eqs. 7-8) on the state.",
    "the definition (eq. 15)",
    "see equation (21) of the paper",
    "Heinsen, arXiv:2404.05843v2.",
    "equation numbers follow v2",
    "as in v3 of the paper",
]


@pytest.mark.parametrize("sentence", GOOD_SENTENCES)
def test_right_citations_pass(sentence):
    assert check_text(sentence) == [], _report(check_text(sentence))


@pytest.mark.parametrize("sentence", BAD_SENTENCES)
def test_wrong_citations_fail(sentence):
    assert check_citations(sentence, "<text>") + check_version(sentence, "<text>"), sentence


def test_citation_parsing():
    assert cited_numbers("5-6") == [5, 6]
    assert cited_numbers("3–6") == [3, 4, 5, 6]
    assert cited_numbers("(3)–(4)") == [3, 4]
    assert cited_numbers("5 and 6") == [5, 6]
    assert cited_numbers("3, 4 and 7") == [3, 4, 7]
    assert cited_numbers("7") == [7]
    found = [m.group("nums") for m in _CITATION.finditer("eq. 1, Eq. (5), eqs. 5-6, equations 3 to 4, (eqs. 3–4)")]
    assert [cited_numbers(n) for n in found] == [[1], [5], [5, 6], [3, 4], [3, 4]]
    assert not list(_CITATION.finditer("equal, frequency, sequence 5, require 4"))


STATE_S_BAD = [
    "S = sum_j exp(k_j) v_j",
    "S = Σ_j φ(k_j) v_j^T",
    r"$$S = \sum_j \exp(k_j)^\top v_j$$",
    r"$S = \sum_j e^{k_j} v_j^T$",
    "S = np.exp(k).T @ v  # [d_k, d_v]",
    "`S = sum_j phi(k_j) v_j^T`",
    "S_f,d = sum_j exp(k_jf) v_jd",
    "Store two pairs in one state, `S = exp(k1) v1^T + exp(k2) v2^T`",
    "the state S",
    "the constant-size state (S, Z)",
    "gives a state $(S, Z)$ of d_k(d_v+1) numbers",
    "The empty state is $S = 0$, $Z = 0$",
    "the latent state\n$S$, $Z$ and its log-space recurrence",
    "two $S$ states",
    "(S, Z) is a latent state of constant size",
    "a recurrence on the state `(log S, log Z)`",
    "S_t = S_{t-1} + exp(k_t) v_t^T",
    r"$$\log S \leftarrow \mathrm{LSE}(\log S,\; k_t + \log v_t)$$",
    "with `log S: [..., d_k, d_v]`",
    "keeps `S = sum_j exp(k_j) v_j^T` (`d_k x d_v`)",
    r"$$\log S = \mathrm{LSE}_j(K^T + \log V)$$",
    "# S [d_k, d_v] and Z [d_k]",
]

STATE_S_GOOD = [
    "S_i = sum_j (exp(q_i)·exp(k_j)) v_j",
    r"$S_i = \sum_j (\exp(q_i)\cdot\exp(k_j))\, v_j$",
    "H^(S)_t = log sum_{j<=t} exp(k_j) v_j^T",
    r"$H^{(S)}_t = \log \sum_{j \le t} e^{k_j} v_j^\top$",
    "the state H^(S), H^(Z); exp(H^(S)) is the linear-space state",
    "log Y = log S - log Z",
    "log S = LSE_f(Q + LSE_j(K^T + log V))",
    "log S_t = LSE_[dK](Q_t + H_t^(S))",
    "S is the numerator, never the state.",
    "States. So the state is H^(S).",
]


@pytest.mark.parametrize("text", STATE_S_BAD)
def test_state_named_s_is_caught(text):
    assert check_state_symbol(text, "<text>"), text


@pytest.mark.parametrize("text", STATE_S_GOOD + [notation.markdown_table(), notation.equations_markdown()])
def test_numerator_s_is_not_flagged(text):
    assert check_state_symbol(text, "<text>") == [], _report(check_state_symbol(text, "<text>"))


# ---------------------------------------------------------------------------------------------- the course


def test_every_citation_and_symbol_in_the_course_follows_notation():
    findings = [f for where, text in scanned_texts() for f in check_text(text, where)]
    assert not findings, _report(findings)


def test_lesson_2_holds_the_notation_table():
    path = ROOT / "notebooks" / "02_log_of_exponentials.ipynb"
    table = notation.markdown_table()
    holding = [i for i, cell_type, source in _notebook_cells(path) if cell_type == "markdown" and table in source]
    assert len(holding) == 1, (
        f"{path.relative_to(ROOT)}: expected one markdown cell holding notation.markdown_table() verbatim, "
        f"found {len(holding)}; paste the output of `python -c 'from logattn_ref import notation; "
        f"print(notation.markdown_table())'`"
    )
