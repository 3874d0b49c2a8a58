"""Lesson 2's figures: each has the panels and labels it promises, and the numbers it draws are the library's."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from logattn_ref import figures, numpy_ref


def _example(seed: int, n: int = 7, d_k: int = 3, d_v: int = 2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d_k)), rng.standard_normal((n, d_k)), rng.uniform(0.5, 2.0, (n, d_v))


def _texts(figure: Figure) -> str:
    found = [t.get_text() for t in figure.texts]
    for ax in figure.axes:
        found += [t.get_text() for t in ax.texts] + [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend is not None:
            found += [t.get_text() for t in legend.get_texts()]
    return "\n".join(found)


# ---- the state as a sum of outer products ---------------------------------------------------------------


@pytest.mark.parametrize("seed, n, signed", [(0, 3, False), (1, 5, True), (2, 1, False)])
def test_memory_terms_add_up_to_the_library_state_and_the_query_reads_the_library_output(seed, n, signed):
    q, k, v = _example(seed, n=n, d_k=4, d_v=3)
    if signed:
        v = v - 1.2  # the linear-space state holds values of any sign
    picture = figures.state_as_outer_products(q[-1], k, v)
    exp_h_s = np.exp(k).T @ v  # sum_j exp(k_j) v_j^T, written independently of the module
    assert np.allclose(picture.terms.sum(0), exp_h_s, rtol=1e-12, atol=1e-12)
    assert np.allclose(picture.state, exp_h_s, rtol=1e-12, atol=1e-12)
    for j in range(n):
        assert np.linalg.matrix_rank(picture.terms[j]) == 1  # each key writes a rank-one term
    y_causal = numpy_ref.log_attention(q, k, v, causal=True)
    assert np.allclose(picture.output, y_causal[-1], rtol=0, atol=1e-12)
    assert np.allclose(picture.library_output, y_causal[-1], rtol=0, atol=1e-12)


def test_memory_figure_draws_every_term_the_sum_and_the_read():
    q, k, v = _example(3, n=3)
    picture = figures.state_as_outer_products(q[2], k[:3], v[:3])
    figure = figures.state_memory_figure(picture)
    images = [np.asarray(ax.images[0].get_array()) for ax in figure.axes]
    assert len(images) == 3 + 1 + 4  # three terms, their sum, and four panels of the read
    for j in range(3):
        assert np.array_equal(images[j], picture.terms[j])
    assert np.array_equal(images[3], picture.state)
    assert np.allclose(images[0] + images[1] + images[2], images[3], rtol=1e-12, atol=1e-12)
    assert np.array_equal(images[4][:, 0], picture.phi_query) and np.array_equal(images[6][0], picture.numerator)
    assert np.array_equal(images[7][0], picture.output)
    text = _texts(figure)
    for label in ("v_1^T", "+ $e^{k_2}", "H^{(S)}_3", "(library)", "e^{q_i}", "S_i / Z_i", f"{picture.denominator:.2f}"):
        assert label in text, label
    # every cell prints its value: a term's texts are its entries
    assert [t.get_text() for t in figure.axes[0].texts] == [f"{x:.2f}" for x in picture.terms[0].ravel()]


@pytest.mark.parametrize("bad", [dict(n=7), dict(q_shape=(2,))])
def test_memory_refuses_what_it_cannot_draw(bad):
    q, k, v = _example(4, n=bad.get("n", 3))
    q_i = np.zeros(bad["q_shape"]) if "q_shape" in bad else q[0]
    with pytest.raises(ValueError):
        figures.state_as_outer_products(q_i, k, v)


# ---- max-plus ------------------------------------------------------------------------------------------


def test_max_plus_bound_and_the_library_similarity():
    rng = np.random.default_rng(5)
    for d_k in (1, 4, 64):
        q, k = 3.0 * rng.standard_normal((2, 200, d_k))
        s, largest = figures.max_plus_scores(q, k)
        assert np.allclose(s, np.log(np.einsum("pf,pf->p", np.exp(q), np.exp(k))), rtol=0, atol=1e-12)
        assert np.all(largest <= s + 1e-12) and np.all(s <= largest + np.log(d_k) + 1e-12)
    equal = np.zeros((1, 8))  # every term equal: the upper bound is reached exactly
    s, largest = figures.max_plus_scores(equal, equal)
    assert np.isclose(s[0] - largest[0], np.log(8), rtol=0, atol=1e-14)


def test_max_plus_figure_shows_the_scores_and_a_gap_that_closes():
    rng = np.random.default_rng(6)
    q, k = rng.standard_normal((2, 150, 16))
    strengths = (0.0, 2.0, 4.0, 8.0)
    figure = figures.max_plus_figure(q, k, strengths=strengths, feature=3)
    scatter_ax, gap_ax = figure.axes
    plain, strong = (np.asarray(c.get_offsets()) for c in scatter_ax.collections[:2])
    s, largest = figures.max_plus_scores(q, k)
    assert np.allclose(plain, np.column_stack([largest, s]), rtol=0, atol=0)
    boost = np.eye(16)[3] * 8.0
    s8, largest8 = figures.max_plus_scores(q + boost, k + boost)
    assert np.allclose(strong, np.column_stack([largest8, s8]), rtol=0, atol=0)
    mean_line = gap_ax.lines[0]
    assert np.array_equal(mean_line.get_xdata(), strengths)
    gaps = np.asarray(mean_line.get_ydata())
    assert np.isclose(gaps[0], (s - largest).mean()) and np.all(np.diff(gaps) < 0) and gaps[-1] < 1e-3
    assert np.isclose(gap_ax.lines[1].get_ydata()[0], np.log(16))  # the log d_k bound
    text = _texts(figure)
    for label in ("random pairs", "one shared feature + 8", r"\log d_k", r"\mathrm{LSE}_f", "feature 3", "d_k = 16"):
        assert label in text, label


def test_max_plus_refuses_mismatched_pairs():
    with pytest.raises(ValueError):
        figures.max_plus_scores(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError):
        figures.max_plus_figure(np.zeros((3, 4)), np.zeros((3, 4)), feature=4)


# ---- the index form with shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("seed, n, d_k, d_v", [(7, 7, 3, 2), (8, 5, 4, 4), (9, 1, 2, 3)])
def test_index_form_is_the_library_log_space_form(seed, n, d_k, d_v):
    q, k, v = _example(seed, n=n, d_k=d_k, d_v=d_v)
    blocks = figures.index_form(q, k, np.log(v))
    expected = numpy_ref.log_attention_logspace(q, k, np.log(v), causal=False)
    assert np.allclose(blocks["log Y"].value, expected, rtol=0, atol=1e-13)
    sizes = {"n": n, "d_k": d_k, "d_v": d_v}
    for name, block in blocks.items():
        assert block.value.shape == tuple(sizes[axis] for axis in block.axes), name
    exp_h_s = np.exp(k).T @ v  # the state, in linear space
    assert np.allclose(np.exp(blocks["H^(S)"].value), exp_h_s, rtol=1e-12, atol=0)
    assert np.allclose(np.exp(blocks["H^(Z)"].value), np.exp(k).sum(0), rtol=1e-12, atol=0)


def test_index_form_figure_labels_every_block_with_its_shape():
    q, k, v = _example(10, n=6, d_k=3, d_v=2)
    blocks = figures.index_form(q, k, np.log(v))
    figure = figures.index_form_figure(blocks)
    text = _texts(figure)
    for block in blocks.values():
        shape = "[" + ", ".join(block.axes) + "] = (" + ", ".join(str(s) for s in block.value.shape) + ")"
        assert f"{block.symbol}\n{shape}" in text, block.symbol
    for label in (r"\mathrm{LSE}_j", r"\mathrm{LSE}_f", "depth: n", "depth: d_k", "eq. 3", "LSE}_{j \\leq i}"):
        assert label in text, label
    ax = figure.axes[0]
    assert sum(isinstance(p, FancyArrowPatch) for p in ax.patches) == 12
    # the boxes are sized by the shapes: K^T is d_k high and n wide, log V is n high and d_v wide
    rects = [p for p in ax.patches if type(p).__name__ == "Rectangle"]
    dims = {(round(r.get_height() / 0.32), round(r.get_width() / 0.32)) for r in rects}
    assert {(3, 6), (6, 2), (6, 3), (3, 2), (3, 1)} <= dims


def test_index_form_refuses_mismatched_shapes():
    with pytest.raises(ValueError):
        figures.index_form(np.zeros((4, 3)), np.zeros((5, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError):
        figures.index_form_figure({"Q": None})


# ---- the chunk triangle (lesson 4) -------------------------------------------------------------------------


@pytest.mark.parametrize("n, chunk_size", [(1, 4), (8, 1), (11, 4), (16, 8), (9, 16)])
def test_chunk_triangle_colours_exactly_the_pairs_the_library_output_depends_on(n, chunk_size):
    import torch

    from logattn_ref import torch_attention

    kinds, names = figures.chunk_triangle_kinds(n, chunk_size)
    rng = np.random.default_rng(n)
    q, k, v = (torch.tensor(rng.standard_normal((n, 3))) for _ in range(3))
    jacobian = torch.autograd.functional.jacobian(
        lambda values: torch_attention.log_attention(q, k, values, method="chunked", chunk_size=chunk_size), v)
    assert np.array_equal(jacobian.abs().sum(dim=(1, 3)).numpy() > 0, kinds > 0)
    assert len(names) == 3 + int(np.log2(chunk_size)) and kinds.max() <= len(names) - 1
    full_chunks = n // chunk_size
    for level in range(1, int(np.log2(chunk_size)) + 1):  # 2^(l-1) blocks of (C / 2^l)^2 pairs per chunk
        in_full = (kinds[: full_chunks * chunk_size, : full_chunks * chunk_size] == 1 + level).sum()
        assert in_full == full_chunks * chunk_size**2 // 2 ** (level + 1)
    between = (kinds == len(names) - 1).sum()
    assert between == n * (n - 1) // 2 - sum(c * (c - 1) // 2 for c in np.bincount(np.arange(n) // chunk_size))


def test_chunk_triangle_figure_labels_both_panels_and_both_directions():
    figure = figures.chunk_triangle_figure(16, 4)
    text = _texts(figure)
    for label in ("key position j", "query position i", "earlier chunk, through the state", "diagonal j = i",
                  "forward: the state is carried to later chunks", "backward: its gradient is carried to earlier chunks",
                  "state\nentering\nchunk 3"):
        assert label in text
    arrows = [p for p in figure.axes[1].patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 2 * 3  # one forward and one backward arrow between each pair of the 4 chunk states


@pytest.mark.parametrize("n, chunk_size", [(0, 4), (8, 3), (8, 0)])
def test_chunk_triangle_refuses_what_the_chunked_form_does_not_do(n, chunk_size):
    with pytest.raises(ValueError):
        figures.chunk_triangle_kinds(n, chunk_size)
