"""Static figures for lesson 2, drawn from the float64 oracle: where a picture says it faster than prose.

Each figure is a pair: a *data function* that computes the numbers with :mod:`logattn_ref.numpy_ref` (so a
lesson can assert them), and a *figure function* that draws exactly those numbers on a
:class:`matplotlib.figure.Figure` (no ``pyplot``: nothing is shown twice, no global state leaks).

- :func:`state_as_outer_products` / :func:`state_memory_figure`: the linear-space state exp(H^(S)) as a sum of
  rank-one terms exp(k_j) v_j^T (a memory that keys write), and one query reading it.
- :func:`max_plus_scores` / :func:`max_plus_figure`: the similarity s_ij = LSE_f(q_if + k_jf) lies between
  max_f(q_if + k_jf) and that max + log d_k; one strong shared feature pulls it onto the max.
- :func:`index_form` / :func:`index_form_figure`: the index form of the log-space equations with the shape
  of every intermediate sketched as a box.
- :func:`chunk_triangle_kinds` / :func:`chunk_triangle_figure` (lesson 4): which (query, key) pairs the
  chunked form computes in its diagonal blocks and which it reads through the carried state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Polygon, Rectangle

from . import numpy_ref

__all__ = [
    "MemoryPicture",
    "state_as_outer_products",
    "state_memory_figure",
    "max_plus_scores",
    "max_plus_figure",
    "IndexFormBlock",
    "index_form",
    "index_form_figure",
    "chunk_triangle_kinds",
    "chunk_triangle_figure",
]


def _matrix(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


# ---- the state as a memory: outer products written by keys, read by a query ---------------------------


@dataclass(frozen=True)
class MemoryPicture:
    """The numbers of :func:`state_memory_figure`.

    Attributes:
        terms: ``[n, d_k, d_v]``, the rank-one terms exp(k_j) v_j^T, one per key (computed literally).
        state: ``[d_k, d_v]``, exp(H^(S)) after the n keys, from the library's recurrent state
            (``numpy_ref.prefill``: ``sum_kv * exp(key_max)``), not from ``terms``.
        normaliser_state: ``[d_k]``, exp(H^(Z)) from the same library state.
        phi_query: ``[d_k]``, exp(q_i) of the query that reads the state.
        numerator: ``[d_v]``, S_i = exp(q_i)^T exp(H^(S)).
        denominator: Z_i = exp(q_i)^T exp(H^(Z)), a float.
        output: ``[d_v]``, y_i = S_i / Z_i.
        library_output: ``[d_v]``, the library's causal output for the last token (which reads this state).
    """

    terms: np.ndarray
    state: np.ndarray
    normaliser_state: np.ndarray
    phi_query: np.ndarray
    numerator: np.ndarray
    denominator: float
    output: np.ndarray
    library_output: np.ndarray


def state_as_outer_products(q_i, k, v) -> MemoryPicture:
    """The state after the keys ``k`` written as a sum of outer products, and the query ``q_i`` reading it.

    Args:
        q_i: ``[d_k]``, the query that reads the state (drawn as the last token of the block).
        k: ``[n, d_k]``; v: ``[n, d_v]`` (any sign), 1 <= n <= 6 so that every term fits in the picture.

    Returns:
        a :class:`MemoryPicture`. ``terms.sum(0)`` equals ``state`` to rounding; ``output`` equals
        ``library_output``.

    Raises:
        ValueError: shapes do not match, n is outside 1..6, or an entry is not finite.
    """
    k, v = _matrix(k, "k"), _matrix(v, "v")
    q_i = np.asarray(q_i, dtype=np.float64)
    n, d_k = k.shape
    if q_i.shape != (d_k,) or v.shape[0] != n or not 1 <= n <= 6 or not np.isfinite(q_i).all():
        raise ValueError(f"need q_i: [d_k], k: [n, d_k], v: [n, d_v] with 1 <= n <= 6 and finite entries, "
                         f"got {q_i.shape}, {k.shape}, {v.shape}")
    terms = np.exp(k)[:, :, None] * v[:, None, :]  # [n, d_k, d_v]: exp(k_j) v_j^T, one per key
    queries = np.vstack([np.zeros((n - 1, d_k)), q_i[None]])  # only the last query is read
    y, state = numpy_ref.prefill(numpy_ref.initial_state((), d_k, v.shape[1]), queries, k, v)
    scale = np.exp(state.key_max)  # the library keeps exp(H - m): undo the stabiliser m for the picture
    exp_h_s, exp_h_z = state.sum_kv * scale[:, None], state.sum_k * scale
    phi_query = np.exp(q_i)
    numerator, denominator = phi_query @ exp_h_s, float(phi_query @ exp_h_z)
    return MemoryPicture(terms, exp_h_s, exp_h_z, phi_query, numerator, denominator, numerator / denominator,
                         y[-1])


def _heatmap(ax, values: np.ndarray, title: str, vmin: float, vmax: float, cmap: str = "viridis") -> None:
    values = np.atleast_2d(values)
    ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
    middle = (vmin + vmax) / 2
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="black" if value > middle else "white")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def state_memory_figure(picture: MemoryPicture, figure: Optional[Figure] = None) -> Figure:
    """Top row: each key writes exp(k_j) v_j^T, and the terms add up to exp(H^(S)) (the library's state).
    Bottom row: the query reads it: exp(q_i), exp(H^(Z)), S_i = exp(q_i)^T exp(H^(S)) and y_i = S_i / Z_i.

    The top row shares one colour scale, so a large term is visibly large; every cell prints its value.
    """
    n = picture.terms.shape[0]
    figure = figure if figure is not None else Figure(figsize=(1.7 * max(n + 1, 4), 4.6))
    figure.clear()
    columns = max(n + 1, 4)
    grid = figure.add_gridspec(2, columns, height_ratios=[1, 1])
    scale = float(max(np.abs(picture.terms).max(), np.abs(picture.state).max()))
    for j in range(n):
        name = rf"$e^{{k_{j + 1}}} v_{j + 1}^T$"
        _heatmap(figure.add_subplot(grid[0, j]), picture.terms[j], ("" if j == 0 else "+ ") + name, -scale, scale,
                 "coolwarm")
    _heatmap(figure.add_subplot(grid[0, n]), picture.state,
             rf"$= e^{{H^{{(S)}}_{n}}}$ (library)", -scale, scale, "coolwarm")
    figure.axes[0].set_ylabel(r"feature $f$ ($d_k$)", fontsize=8)
    figure.axes[0].set_xlabel(r"channel ($d_v$)", fontsize=8)

    read = [
        (picture.phi_query[:, None], r"query: $e^{q_i}$"),
        (picture.normaliser_state[:, None], rf"$e^{{H^{{(Z)}}_{n}}}$"),
        (picture.numerator[None], r"$S_i = (e^{q_i})^T e^{H^{(S)}}$"),
        (picture.output[None], rf"$y_i = S_i / Z_i$,  $Z_i$ = {picture.denominator:.2f}"),
    ]
    for col, (values, title) in enumerate(read):
        bound = float(np.abs(values).max())
        _heatmap(figure.add_subplot(grid[1, col]), values, title, -bound, bound, "coolwarm")
    figure.suptitle(f"a memory written by {n} keys (top) and read by one query (bottom)", fontsize=10)
    figure.tight_layout()
    return figure


# ---- max-plus: the log-sum-exp over features is close to the largest feature ---------------------------


def max_plus_scores(q, k) -> Tuple[np.ndarray, np.ndarray]:
    """For row-aligned pairs (q_p, k_p): the similarity s_p = LSE_f(q_pf + k_pf) and its largest term.

    Args:
        q, k: ``[pairs, d_k]``.

    Returns:
        ``(s, largest)``, both ``[pairs]``, with ``largest <= s <= largest + log(d_k)`` (a sum of d_k
        exponentials is at least its largest term and at most d_k times it).

    Raises:
        ValueError: shapes differ or are not 2-D, or an entry is not finite.
    """
    q, k = _matrix(q, "q"), _matrix(k, "k")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape [pairs, d_k], got {q.shape} and {k.shape}")
    terms = q + k  # [pairs, d_k]
    return numpy_ref.logsumexp(terms, axis=-1), terms.max(axis=-1)


def max_plus_figure(q, k, strengths: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0), feature: int = 0,
                    figure: Optional[Figure] = None) -> Figure:
    """Left: s against max_f(q_f + k_f) for the pairs as given and for the same pairs with feature ``feature``
    raised by ``max(strengths)`` in both q and k, between the lines max and max + log d_k. Right: the gap
    s - max_f against that strength (mean over the pairs, and its range).
    """
    q, k = _matrix(q, "q"), _matrix(k, "k")
    d_k = q.shape[1]
    if not 0 <= feature < d_k:
        raise ValueError(f"feature must be in [0, {d_k - 1}], got {feature}")
    if len(strengths) < 2:
        raise ValueError("need at least two strengths")
    boost = np.zeros(d_k)
    boost[feature] = 1.0
    gaps = []
    for strength in strengths:
        s, largest = max_plus_scores(q + strength * boost, k + strength * boost)
        gaps.append(s - largest)
    gaps = np.array(gaps)  # [strengths, pairs]

    figure = figure if figure is not None else Figure(figsize=(9.0, 3.6))
    figure.clear()
    scatter_ax, gap_ax = figure.subplots(1, 2)
    s_plain, top_plain = max_plus_scores(q, k)
    strong = max(strengths)
    s_strong, top_strong = max_plus_scores(q + strong * boost, k + strong * boost)
    scatter_ax.scatter(top_plain, s_plain, s=8, alpha=0.6, label="random pairs")
    scatter_ax.scatter(top_strong, s_strong, s=8, alpha=0.6, label=f"one shared feature + {strong:g}")
    line = np.linspace(min(top_plain.min(), top_strong.min()), max(top_plain.max(), top_strong.max()), 2)
    scatter_ax.plot(line, line, "k-", lw=1, label=r"$s = \max_f$")
    scatter_ax.plot(line, line + np.log(d_k), "k--", lw=1, label=r"$s = \max_f + \log d_k$")
    scatter_ax.set_xlabel(r"$\max_f\,(q_{if} + k_{jf})$")
    scatter_ax.set_ylabel(r"$s_{ij} = \mathrm{LSE}_f\,(q_{if} + k_{jf})$")
    scatter_ax.set_title(f"{q.shape[0]} pairs, d_k = {d_k}", fontsize=9)
    scatter_ax.legend(fontsize=7)

    strengths = np.asarray(strengths, dtype=np.float64)
    gap_ax.plot(strengths, gaps.mean(axis=1), "o-", label="mean over pairs")
    gap_ax.fill_between(strengths, gaps.min(axis=1), gaps.max(axis=1), alpha=0.25, label="min to max")
    gap_ax.axhline(np.log(d_k), color="k", ls="--", lw=1, label=r"$\log d_k$ (upper bound)")
    gap_ax.axhline(0.0, color="k", lw=1)
    gap_ax.set_xlabel(f"strength a added to feature {feature} of both q and k")
    gap_ax.set_ylabel(r"$s_{ij} - \max_f\,(q_{if} + k_{jf})$")
    gap_ax.set_title("one strong shared feature: s is its max", fontsize=9)
    gap_ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


# ---- the index form of the log-space equations, with shapes ------------------------------------------


@dataclass(frozen=True)
class IndexFormBlock:
    """One array of the non-causal log-space form: its symbol, its index form, its axes by name, its value."""

    symbol: str
    formula: str
    axes: Tuple[str, ...]
    value: np.ndarray


def index_form(q, k, log_v) -> Dict[str, IndexFormBlock]:
    """Every intermediate of the non-causal log-space form (eq. 3, output by eq. 2), element by element.

    Args:
        q: ``[n, d_k]``; k: ``[n, d_k]``; log_v: ``[n, d_v]`` (the log of values V >= 0; -inf allowed).

    Returns:
        the blocks by name, in the order they are computed: ``"Q"``, ``"K^T"``, ``"log V"``, ``"K^T + log V"``,
        ``"H^(S)"``, ``"H^(Z)"``, ``"Q + H^(S)"``, ``"Q + H^(Z)"``, ``"log S"``, ``"log Z"``, ``"log Y"``. The
        last equals ``numpy_ref.log_attention_logspace(q, k, log_v, causal=False)``.

    Raises:
        ValueError: shapes do not match, or q, k hold a non-finite entry, or log_v holds NaN or +inf.
    """
    q, k = _matrix(q, "q"), _matrix(k, "k")
    log_v = np.asarray(log_v, dtype=np.float64)
    if log_v.ndim != 2 or q.shape != k.shape or log_v.shape[0] != k.shape[0]:
        raise ValueError(f"need q, k: [n, d_k] and log_v: [n, d_v], got {q.shape}, {k.shape}, {log_v.shape}")
    keys_values = k.T[:, :, None] + log_v[None, :, :]  # [d_k, n, d_v]: k_jf + log v_jd
    h_s = numpy_ref.logsumexp(keys_values, axis=1)  # [d_k, d_v]: LSE over keys j
    h_z = numpy_ref.logsumexp(k.T, axis=1)  # [d_k]
    read_s = q[:, :, None] + h_s[None]  # [n, d_k, d_v]: q_if + H^(S)_fd
    read_z = q + h_z[None]  # [n, d_k]
    log_s = numpy_ref.logsumexp(read_s, axis=1)  # [n, d_v]: LSE over features f
    log_z = numpy_ref.logsumexp(read_z, axis=1)  # [n]
    blocks = [
        ("Q", r"$Q$", r"$q_{if}$", ("n", "d_k"), q),
        ("K^T", r"$K^T$", r"$k_{jf}$", ("d_k", "n"), k.T),
        ("log V", r"$\log V$", r"$\log v_{jd}$", ("n", "d_v"), log_v),
        ("K^T + log V", r"$K^T + \log V$", r"$k_{jf} + \log v_{jd}$", ("d_k", "n", "d_v"), keys_values),
        ("H^(S)", r"$H^{(S)}$", r"$\mathrm{LSE}_j(k_{jf} + \log v_{jd})$", ("d_k", "d_v"), h_s),
        ("H^(Z)", r"$H^{(Z)}$", r"$\mathrm{LSE}_j\, k_{jf}$", ("d_k",), h_z),
        ("Q + H^(S)", r"$Q + H^{(S)}$", r"$q_{if} + H^{(S)}_{fd}$", ("n", "d_k", "d_v"), read_s),
        ("Q + H^(Z)", r"$Q + H^{(Z)}$", r"$q_{if} + H^{(Z)}_{f}$", ("n", "d_k"), read_z),
        ("log S", r"$\log S$", r"$\mathrm{LSE}_f(q_{if} + H^{(S)}_{fd})$", ("n", "d_v"), log_s),
        ("log Z", r"$\log Z$", r"$\mathrm{LSE}_f(q_{if} + H^{(Z)}_{f})$", ("n",), log_z),
        ("log Y", r"$\log Y$", r"$\log S_{id} - \log Z_i$", ("n", "d_v"), log_s - log_z[:, None]),
    ]
    return {name: IndexFormBlock(symbol, formula, axes, value) for name, symbol, formula, axes, value in blocks}


# Where each block sits (x of its left edge, y of its centre) and which axis is drawn as depth: the axis the
# next step reduces (keys j for K^T + log V, features f for Q + H), so a reduction visibly flattens a block.
# The numerator path (S) runs along the top (centre 6), the normaliser path (Z) along the bottom (centre 1.6).
_LAYOUT = {
    "log V": (0.0, 6.0, None), "K^T": (0.0, 3.3, None), "K^T + log V": (3.2, 6.0, "n"),
    "H^(S)": (7.0, 6.0, None), "H^(Z)": (7.0, 1.6, None), "Q": (9.4, 3.8, None),
    "Q + H^(S)": (12.2, 6.0, "d_k"), "Q + H^(Z)": (12.2, 1.6, "d_k"),
    "log S": (15.8, 6.0, None), "log Z": (15.8, 1.6, None), "log Y": (19.4, 3.8, None),
}
_ARROWS = [  # (from, to, label)
    ("log V", "K^T + log V", "+ (broadcast)"), ("K^T", "K^T + log V", ""),
    ("K^T + log V", "H^(S)", r"$\mathrm{LSE}_j$ (keys)"), ("K^T", "H^(Z)", r"$\mathrm{LSE}_j$ (keys)"),
    ("H^(S)", "Q + H^(S)", "+ (broadcast)"), ("Q", "Q + H^(S)", ""), ("H^(Z)", "Q + H^(Z)", "+"),
    ("Q", "Q + H^(Z)", ""), ("Q + H^(S)", "log S", r"$\mathrm{LSE}_f$ (features)"),
    ("Q + H^(Z)", "log Z", r"$\mathrm{LSE}_f$ (features)"), ("log S", "log Y", r"$-$"), ("log Z", "log Y", ""),
]
_UNIT = 0.32  # drawing units per array element


def _block_size(block: IndexFormBlock, depth_axis: Optional[str]) -> Tuple[float, float, float]:
    """(width, height, depth) of the drawn block: rows are the first remaining axis, columns the second."""
    sizes = dict(zip(block.axes, block.value.shape))
    flat = [axis for axis in block.axes if axis != depth_axis]
    rows = sizes[flat[0]]
    cols = sizes[flat[1]] if len(flat) > 1 else 1
    depth = sizes[depth_axis] if depth_axis else 0
    return cols * _UNIT, rows * _UNIT, depth * _UNIT * 0.45


def _draw_block(ax, x: float, y: float, size: Tuple[float, float, float], color) -> None:
    width, height, depth = size
    ax.add_patch(Rectangle((x, y), width, height, facecolor=color, edgecolor="black", lw=0.8))
    if depth:
        ax.add_patch(Polygon([(x, y + height), (x + depth, y + height + depth),
                              (x + width + depth, y + height + depth), (x + width, y + height)],
                             closed=True, facecolor=color, edgecolor="black", lw=0.8, alpha=0.6))
        ax.add_patch(Polygon([(x + width, y), (x + width + depth, y + depth),
                              (x + width + depth, y + height + depth), (x + width, y + height)],
                             closed=True, facecolor=color, edgecolor="black", lw=0.8, alpha=0.4))


def index_form_figure(blocks: Dict[str, IndexFormBlock], figure: Optional[Figure] = None) -> Figure:
    """Boxes for every block of :func:`index_form`, sized by its shape (3-D blocks drawn with the reduced axis
    as depth), arrows for the broadcast sums and the two log-sum-exp reductions, and the index form below.

    Each box is labelled with its symbol, its axes by name and its numeric shape; the numerator path (S) runs
    along the top, the normaliser path (Z) along the bottom, and the output log Y = log S - log Z on the right.
    """
    missing = set(_LAYOUT) - set(blocks)
    if missing:
        raise ValueError(f"blocks lack {sorted(missing)}: pass the result of index_form()")
    figure = figure if figure is not None else Figure(figsize=(12.0, 6.2))
    figure.clear()
    ax = figure.add_axes([0.0, 0.22, 1.0, 0.7])
    colors = {"Q": "#9ecae1", "K^T": "#fdae6b", "log V": "#a1d99b"}
    boxes = {}
    for name, (x, centre, depth_axis) in _LAYOUT.items():
        block = blocks[name]
        size = _block_size(block, depth_axis)
        y = centre - size[1] / 2
        _draw_block(ax, x, y, size, colors.get(name, "#dadaeb" if "Z" in name else "#bcbddc"))
        boxes[name] = (x, y, size)
        width, height, depth = size
        shape = "[" + ", ".join(block.axes) + "]"
        numbers = "(" + ", ".join(str(s) for s in block.value.shape) + ")"
        ax.text(x + width / 2, y + height + depth + 0.12, f"{block.symbol}\n{shape} = {numbers}",
                ha="center", va="bottom", fontsize=8)
        if depth_axis:
            ax.text(x + width + depth + 0.05, y + height + depth / 2, f"depth: {depth_axis}", fontsize=7,
                    va="center", color="dimgray")
    for source, target, label in _ARROWS:
        sx, sy, (sw, sh, sd) = boxes[source]
        tx, ty, (tw, th, _) = boxes[target]
        start, end = (sx + sw + sd + 0.05, sy + sh / 2), (tx - 0.05, ty + th / 2)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, lw=0.8, color="black"))
        if label:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, label, ha="center", va="bottom",
                    fontsize=7, color="darkred")
    xs = [x + w + d for x, _, (w, _, d) in boxes.values()]
    ys = [y + h + d for _, y, (_, h, d) in boxes.values()]
    ax.set_xlim(-0.4, max(xs) + 1.0)
    ax.set_ylim(0.0, max(ys) + 1.1)
    ax.set_aspect("equal")
    ax.axis("off")
    lines = [
        r"$H^{(S)}_{fd} = \mathrm{LSE}_j\,(k_{jf} + \log v_{jd})$,   "
        r"$H^{(Z)}_{f} = \mathrm{LSE}_j\, k_{jf}$   (the states, summed over keys $j$)",
        r"$\log S_{id} = \mathrm{LSE}_f\,(q_{if} + H^{(S)}_{fd})$,   "
        r"$\log Z_{i} = \mathrm{LSE}_f\,(q_{if} + H^{(Z)}_{f})$,   "
        r"$\log Y_{id} = \log S_{id} - \log Z_i$   (each query reads them)",
        r"non-causal log-space form: eq. 3; causal (eq. 4): $\mathrm{LSE}_{j \leq i}$, so $H^{(S)}$ keeps an "
        r"axis $i$: $[n, d_k, d_v]$",
    ]
    for row, text in enumerate(lines):
        figure.text(0.02, 0.17 - 0.065 * row, text, fontsize=9, ha="left", va="top")
    figure.suptitle("the log-space equations element by element, with the shape of every array", fontsize=11)
    return figure


# ---- the chunk triangle (lesson 4): which (query, key) pairs the chunked form computes, and how ---------

def chunk_triangle_kinds(n: int, chunk_size: int) -> Tuple[np.ndarray, list]:
    """How the chunked form of causal attention reaches each pair (query i, key j): an ``[n, n]`` int array.

    Mirrors ``torch_attention._chunked_forward``: inside a chunk of ``C = chunk_size`` tokens (a power of two)
    the diagonal is elementwise and the strictly-lower triangle is split recursively, (second-half rows) x
    (first-half columns) at level 1, then each half again; keys of earlier chunks reach a query only through
    the state carried into its chunk. Returns ``(kinds, names)`` with ``names[code]`` describing each code.
    Raises ``ValueError`` unless ``n >= 1`` and ``chunk_size`` is a power of two.
    """
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if int(chunk_size) < 1 or int(chunk_size) & (int(chunk_size) - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    n, size = int(n), int(chunk_size)
    levels = size.bit_length() - 1  # log2(C)
    state_code = 2 + levels
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    kinds = np.zeros((n, n), dtype=int)
    kinds[(j < i) & (i // size != j // size)] = state_code
    same_chunk = (j < i) & (i // size == j // size)
    # Level l (1 = largest blocks, half = C / 2^l): the first power-of-two block of the chunk where i and j part.
    offset_i, offset_j = i % size, j % size
    for level in range(1, levels + 1):
        half = size >> level
        parted = (offset_i // half) != (offset_j // half)
        kinds[same_chunk & parted & (kinds == 0)] = 1 + level
    kinds[j == i] = 1
    names = ["future key (masked)", "diagonal j = i (elementwise)"]
    names += [f"in-chunk block, level {level} ({size >> level} x {size >> level} matmuls)" for level in range(1, levels + 1)]
    names.append("earlier chunk, through the state")
    return kinds, names


def chunk_triangle_figure(n: int, chunk_size: int, figure: Optional[Figure] = None) -> Figure:
    """Draw :func:`chunk_triangle_kinds`: the quadratic blocks on the diagonal and the work done through the state.

    Left: the ``[n, n]`` grid of (query i, key j) coloured by kind, chunk borders drawn. Right: the chunk states
    in order, with the forward pass carrying the state to LATER chunks and the backward pass carrying its
    gradient to EARLIER ones (a reverse scan).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    kinds, names = chunk_triangle_kinds(n, chunk_size)
    size = int(chunk_size)
    chunks = -(-int(n) // size)
    levels = len(names) - 3
    blues = [(0.35 + 0.5 * t, 0.55 + 0.35 * t, 0.95) for t in np.linspace(0.0, 1.0, max(levels, 1))][:levels]
    colours = ["white", "tab:red"] + blues + ["tab:orange"]
    figure = figure if figure is not None else Figure(figsize=(10.0, 4.6))
    figure.clear()
    grid, chain = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1.0]})
    grid.imshow(kinds, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5, interpolation="nearest")
    for border in range(size, int(n), size):
        grid.axhline(border - 0.5, color="black", linewidth=1.0)
        grid.axvline(border - 0.5, color="black", linewidth=1.0)
    grid.set_xlabel("key position j")
    grid.set_ylabel("query position i")
    grid.set_title(f"n = {n}, chunk size C = {size}: who computes which pair", fontsize=10)
    grid.legend(handles=[Patch(facecolor=c, edgecolor="grey", label=name) for c, name in zip(colours, names)],
                loc="upper right", fontsize=7, framealpha=0.95)
    for c in range(chunks):
        chain.text(c, 0.0, f"state\nentering\nchunk {c}", ha="center", va="center", fontsize=7,
                   bbox={"boxstyle": "round", "facecolor": "moccasin", "edgecolor": "tab:orange"})
        if c + 1 < chunks:
            chain.add_patch(FancyArrowPatch((c + 0.3, 0.25), (c + 0.7, 0.25), arrowstyle="-|>", mutation_scale=12,
                                            color="tab:orange"))
            chain.add_patch(FancyArrowPatch((c + 0.7, -0.25), (c + 0.3, -0.25), arrowstyle="-|>", mutation_scale=12,
                                            color="tab:purple"))
    chain.text((chunks - 1) / 2, 0.45, "forward: the state is carried to later chunks", ha="center", fontsize=8,
               color="tab:orange")
    chain.text((chunks - 1) / 2, -0.5, "backward: its gradient is carried to earlier chunks", ha="center",
               fontsize=8, color="tab:purple")
    chain.set_xlim(-0.6, chunks - 0.4)
    chain.set_ylim(-0.7, 0.7)
    chain.set_axis_off()
    chain.set_title(f"{chunks} chunk states, one d_k x d_v state each", fontsize=10)
    figure.tight_layout()
    return figure
