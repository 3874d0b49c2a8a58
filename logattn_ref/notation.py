"""The course's one notation and the paper's equation numbers, kept in one place so that they cannot drift.

Lessons, exercises, docstrings and grading messages cite the paper's equations by number and use one set of
symbols. Both used to drift: lessons cited the causal form by the numbers the paper gives the recurrence,
and one lesson wrote ``S`` for the state while the next wrote it for the numerator. This module is the source of
truth for

- :data:`PAPER_VERSION`, the one arXiv version whose equation numbers the course cites;
- :data:`EQUATIONS`, what each numbered equation of that version is, with the words a citation of it must be
  near (``tests/test_notation.py`` scans every lesson, exercise, docstring and README for citations and checks
  each one against these words, so a citation of the initial state for the recurrence fails);
- :data:`SYMBOLS`, the symbol table, rendered by :func:`markdown_table` into lesson 2 verbatim (the test
  checks the lesson holds exactly this text).

Plain data and tiny functions only: importing it costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PAPER",
    "PAPER_ARXIV",
    "PAPER_VERSION",
    "PAPER_CITATION",
    "Equation",
    "EQUATIONS",
    "Symbol",
    "SYMBOLS",
    "markdown_table",
    "equations_markdown",
]

PAPER = 'F. A. Heinsen, "Softmax Attention with Constant Cost per Token"'
PAPER_ARXIV = "arXiv:2404.05843"
#: The version whose equation numbers every citation in the course uses: v1, submitted 8 April 2024.
PAPER_VERSION = "arXiv:2404.05843v1"
PAPER_CITATION = f"{PAPER}, {PAPER_VERSION}"


@dataclass(frozen=True)
class Equation:
    """One numbered equation of the paper (v1).

    ``keywords`` are regular expressions (matched case-insensitively); a citation of this equation must have
    at least one of them in the same sentence or line, so that a citation names what it cites. A citation
    near one of ``conflicts`` is wrong unless one of ``conflict_unless`` is near too (eq. 3 is the non-causal
    form: cited beside "causal" alone it cites the wrong equation).
    """

    number: int
    summary: str
    keywords: tuple[str, ...]
    conflicts: tuple[str, ...] = ()
    conflict_unless: tuple[str, ...] = ()
    conflict_reason: str = ""


# Regex pieces shared by several equations. "causal" must not match inside "non-causal".
_CAUSAL = r"(?<![a-z-])(?<!non )causal(?!\s*=)"  # not the argument causal=True
_AUTOREGRESSIVE = r"(?<![a-z-])(?<!non )auto-?regressive"
_NONCAUSAL = r"non-?\s?causal|non-?\s?auto-?regressive|bidirectional|all keys"
_LOGSPACE = r"log[- ]?space"
_LSE = r"(?<![A-Za-z])(?-i:LSE)(?![A-Za-z])"  # the plain log-sum-exp, not LCSE, not "else"
_STATE = r"\bstates?\b|(?-i:H\^\{?\(?[SZ]|H\(\s*[SZ]\)|H_t|H_\{t)|hidden"

EQUATIONS: dict[int, Equation] = {
    e.number: e
    for e in (
        Equation(
            1,
            "the modified attention: Softmax(log(exp(Q) exp(K)^T / exp(c))) V, with c a scalar constant",
            (r"defin", r"modifi", r"log\s*(?:\\[bB]igg?l?)?\s*\(\s*\\?exp", r"exp\s*\(\s*[qQ]", r"similarit", r"logit",
             r"\bscor", r"exp\s*\(\s*c\s*\)",
             r"constant c\b", r"log-of-exponentials", r"quadratic", r"s_\{?ij", r"softmax\s*\(\s*log"),
        ),
        Equation(
            2,
            "attention = exp(log S - log Z): the output from the log numerator and log denominator",
            (r"log\s*S\s*[-−–]\s*log\s*Z", r"log\s*Y", r"normali[sz]", r"numerator", r"denominator", r"output",
             r"exp\s*\(\s*log\s*S"),
        ),
        Equation(
            3,
            "non-causal log-space form: log S = LSE_[dK](Q + LSE_[nK](K^T + log V)), log Z likewise without log V",
            (_NONCAUSAL, _LOGSPACE, _LSE, r"log-sum-exp", r"logsumexp"),
            conflicts=(_CAUSAL, _AUTOREGRESSIVE),
            conflict_unless=(_NONCAUSAL, r"\bboth\b", r"in place of", r"replac", r"instead of"),
            conflict_reason="the causal form is eq. 4; eq. 3 is the non-causal one (say 'non-causal' or 'both')",
        ),
        Equation(
            4,
            "causal (autoregressive) log-space form: eq. 3 with LCSE_[nK] (log-cumulative-sum-exp) as inner LSE",
            (_CAUSAL, _AUTOREGRESSIVE, r"LCSE", r"cumulative", r"logcumsumexp", r"j\s*(?:<=|≤|\\le)\s*[it]",
             _LOGSPACE),  # "the log-space form (eqs. 3-4)" cites both forms
            conflicts=(_NONCAUSAL,),
            conflict_unless=(_CAUSAL, _AUTOREGRESSIVE, r"LCSE", r"cumulative", r"\bboth\b"),
            conflict_reason="the non-causal form is eq. 3 alone; eq. 4 is the causal one",
        ),
        Equation(
            5,
            "sequential read-out: log S_t = LSE_[dK](Q_t + H_t^(S)), log Z_t = LSE_[dK](Q_t + H_t^(Z))",
            (r"recurren", _STATE, r"\bstep", r"sequential", r"one token at a time", r"per token", r"decod"),
        ),
        Equation(
            6,
            "the state recurrence: H_t^(S) = log(exp(H_{t-1}^(S)) + exp(K_t + log V_t)), H_t^(Z) likewise",
            (r"recurren", _STATE, r"\bstep", r"sequential", r"one token at a time", r"per token", r"logaddexp",
             r"update"),
        ),
        Equation(
            7,
            "the initial state: H_0^(S) = 0, H_0^(Z) = 0 (log-space zeros: exp(0) = 1, a phantom token)",
            (r"initial", r"\binit", r"empty", r"phantom", r"(?-i:H_\{?0|H\^\{?\(?[SZ]\)?\}?_\{?0)", r"\bzeros?\b"),
        ),
        Equation(
            8,
            "non-autoregressive sequential application: every query reads the updated states H_t^(S), H_t^(Z)",
            (_NONCAUSAL, r"all queries", r"every query"),
        ),
        Equation(9, "proof: the softmax of (1) expanded; exp(c) cancels as a common divisor",
                 (r"proof", r"exp\s*\(\s*c\s*\)", r"cancel", r"divisor", r"constant c\b")),
        Equation(10, "proof: dot products of exponentials as explicit sums of elementwise products",
                 (r"proof", r"elementwise", r"explicit")),
        Equation(11, "proof: the product with V as a sum of broadcast elementwise products",
                 (r"proof", r"broadcast", r"elementwise")),
        Equation(12, "proof: the sum over keys taken before the product with exp(Q)",
                 (r"proof", r"sum over (?:the )?keys", r"first", r"before", r"reorder")),
        Equation(13, "definition of S (numerators) and Z (denominators)",
                 (r"numerator", r"denominator", r"\bS\b", r"\bZ\b", r"defin")),
        Equation(14, "the same as (3): log S and log Z as log-sums of exponentials",
                 (r"proof", _LSE, _LOGSPACE, r"same as")),
    )
}


@dataclass(frozen=True)
class Symbol:
    """One row of the notation table."""

    symbol: str
    meaning: str
    shape: str


SYMBOLS: tuple[Symbol, ...] = (
    Symbol("q_i, k_j, v_j", "query, key, value rows; Q, K, V the matrices", "d_k, d_k, d_v"),
    Symbol("n (n_q, n_k)", "sequence length (queries, keys)", ""),
    Symbol("phi(x) = exp(x)", "the elementwise feature map", ""),
    Symbol("s_ij = log(exp(q_i)·exp(k_j)) = LSE_f(q_if + k_jf)", "similarity; the logit of eq. 1 is s_ij - c",
           "scalar"),
    Symbol("c", "the paper's scaling constant (eq. 1); exp(c) divides exp(q)·exp(k) and cancels in the softmax "
           "(noted under eq. 9)", "scalar"),
    Symbol("S_i = sum_j (exp(q_i)·exp(k_j)) v_j", "numerator (eq. 13)", "d_v"),
    Symbol("Z_i = sum_j exp(q_i)·exp(k_j)", "denominator, the normaliser (eq. 13)", "scalar"),
    Symbol("y_i = S_i / Z_i ; log Y = log S - log Z", "output (eq. 2)", "d_v"),
    Symbol("H^(S)_t = log sum_{j<=t} exp(k_j) v_j^T",
           "the value state, in log space (eq. 6); exp(H^(S)) is the linear-space state", "d_k x d_v"),
    Symbol("H^(Z)_t = log sum_{j<=t} exp(k_j)", "the normaliser state, in log space (eq. 6)", "d_k"),
    Symbol("H^(S)_0 = H^(Z)_0 = -inf", "the empty state (the paper's eq. 7 uses 0, a phantom token)", ""),
    Symbol("m (key_max), running maxima",
           "stabilisers; code fields sum_kv = exp(H^(S) - m), sum_k = exp(H^(Z) - m)", "d_k"),
    Symbol("LSE, LCSE", "log-sum-exp, log-cumulative-sum-exp (the paper's names)", ""),
)


def _cell(text: str) -> str:
    """A Markdown table cell: code-formatted symbols, pipes escaped."""
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The symbol table as a Markdown table (lesson 2 holds this text verbatim in one markdown cell)."""
    lines = [
        f"**Notation** (used in every lesson, exercise, docstring and grading message; equation numbers are "
        f"those of {PAPER_VERSION}). `S` is always the numerator, never the state.",
        "",
        "| symbol | meaning | shape |",
        "|---|---|---|",
    ]
    for row in SYMBOLS:
        shape = f"`{row.shape}`" if row.shape else ""
        lines.append(f"| `{_cell(row.symbol)}` | {_cell(row.meaning)} | {shape} |")
    return "\n".join(lines)


def equations_markdown() -> str:
    """The equations of the paper (v1) as a Markdown list: number and what it is."""
    lines = [f"Equations of {PAPER_VERSION}:", ""]
    lines += [f"- ({e.number}) {e.summary}" for e in EQUATIONS.values()]
    return "\n".join(lines)
