"""The lesson explorers: they build without a front end, redraw with new data when a control moves, their
static fallbacks draw, and the numbers they draw are the oracle's."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.figure import Figure

pytest.importorskip("ipywidgets")

from logattn_ref import numpy_ref, widgets  # noqa: E402


def _bar_heights(figure: Figure, axis: int = 0) -> np.ndarray:
    return np.array([patch.get_height() for patch in figure.axes[axis].patches])


def _image_data(figure: Figure, axis: int = 0) -> np.ndarray:
    return np.asarray(figure.axes[axis].images[0].get_array())


# ---- lesson 1 -------------------------------------------------------------------------------------------


def test_attention_weights_match_the_oracle_softmax_attention():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((3, 9, 5))
    for temperature in (0.3, 1.0, 4.0):
        w = widgets.attention_weights(q, k, temperature)
        expected = numpy_ref.softmax_attention(q, k, v, causal=True, scale=1 / (np.sqrt(5) * temperature))
        assert np.allclose(w @ v, expected, atol=1e-12, rtol=0)
        assert np.allclose(w.sum(-1), 1.0) and np.all(np.triu(w, 1) == 0)


def test_attention_explorer_redraws_when_temperature_and_query_move():
    explorer = widgets.attention_explorer(n=10, d_k=4, seed=3, interactive=True)
    assert explorer.interactive and "logattn-attention-explorer" in explorer.widget._dom_classes
    slider = explorer.controls["temperature"]
    assert slider.description == "temperature"
    before_bars, before_heat = _bar_heights(explorer.figure), _image_data(explorer.figure, 1)
    slider.value = 0.1  # sharper: the largest weight grows
    after_bars, after_heat = _bar_heights(explorer.figure), _image_data(explorer.figure, 1)
    assert not np.allclose(before_bars, after_bars) and not np.allclose(before_heat, after_heat)
    assert after_bars.max() > before_bars.max()
    assert np.allclose(after_bars, widgets.attention_weights(*_qk(10, 4, 3), 0.1)[-1])
    explorer.controls["query"].value = 2  # a causal query sees only keys 0..2
    bars = _bar_heights(explorer.figure)
    assert np.all(bars[3:] == 0) and np.isclose(bars[:3].sum(), 1.0)


def _qk(n, d_k, seed):
    q, k, _ = widgets._random_qkv(n, d_k, 1, seed)
    return q, k


def test_attention_static_fallback_and_bad_input():
    explorer = widgets.attention_explorer(n=5, interactive=False)
    assert not explorer.interactive and explorer.controls == {}
    assert "image/png" in explorer._repr_mimebundle_()
    explorer.update(temperature=2.0, query=1)
    assert np.all(_bar_heights(explorer.figure)[2:] == 0)
    q, k = _qk(4, 2, 0)
    with pytest.raises(ValueError, match="temperature"):
        widgets.attention_figure(q, k, temperature=0.0)
    with pytest.raises(ValueError, match="query"):
        widgets.attention_figure(q, k, query=4)


# ---- lesson 2 -------------------------------------------------------------------------------------------


@given(n=st.integers(1, 9), d_k=st.integers(1, 4), d_v=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_every_derivation_step_gives_the_oracle_output(n, d_k, d_v, seed):
    rng = np.random.default_rng(seed)
    q, k = 2 * rng.standard_normal((2, n, d_k))
    v = rng.uniform(0.1, 3.0, (n, d_v))
    reference = numpy_ref.log_attention_quadratic(q, k, v, causal=True)
    for step in widgets.derivation_steps(q, k, v):
        assert numpy_ref.scaled_error(step.output, reference, v) < 1e-12, step.title


def test_derivation_explorer_steps_draw_different_tensors():
    explorer = widgets.derivation_explorer(interactive=True)
    drawn = []
    for index in range(len(explorer.steps)):
        explorer.controls["step"].value = index
        drawn.append(_image_data(explorer.figure, 0).copy())
        assert f"step {index + 1}" in explorer.figure.axes[0].get_title()
    assert not np.allclose(drawn[0], drawn[2])  # s vs exp(s): a different tensor each step
    with pytest.raises(ValueError, match="v must be > 0"):
        widgets.derivation_steps(np.zeros((2, 2)), np.zeros((2, 2)), -np.ones((2, 1)))


# ---- lesson 3 -------------------------------------------------------------------------------------------


def test_measure_cost_sees_quadratic_memory_growth():
    small, large = (widgets.measure_cost("quadratic", n, d_k=4, d_v=4, repeats=1) for n in (32, 256))
    linear = widgets.measure_cost("linear", 256, d_k=4, d_v=4, repeats=1)
    assert large.peak_bytes > 16 * small.peak_bytes  # n x n x d_k temporaries: 64x the entries
    assert linear.peak_bytes < large.peak_bytes and small.seconds > 0
    with pytest.raises(ValueError, match="method"):
        widgets.measure_cost("cubic", 8)


def test_cost_explorer_remeasures_when_n_moves():
    explorer = widgets.cost_explorer((16, 128), d_k=4, d_v=4, repeats=1, interactive=True)
    before = _bar_heights(explorer.figure, 1)  # memory bars: deterministic, unlike times
    explorer.controls["n"].value = 128
    after = _bar_heights(explorer.figure, 1)
    assert after[0] > before[0] and "n = 128" in explorer.figure.texts[0].get_text()
    static = widgets.cost_explorer((16,), d_k=2, d_v=2, repeats=1, interactive=False)
    assert len(static.figure.axes) == 2 and len(_bar_heights(static.figure)) == 2


# ---- lesson 4 -------------------------------------------------------------------------------------------


@given(st.lists(st.floats(-30, 30), min_size=1, max_size=13))  # odd and even lengths, n = 1
def test_scans_end_at_the_inclusive_scan(values):
    x = np.array(values)
    for levels in (widgets.hillis_steele_levels(x), widgets.blelloch_levels(x)):
        assert np.allclose(levels[-1].values[: x.size], np.cumsum(x), atol=1e-9)
    for levels in (widgets.hillis_steele_levels(x, "logaddexp"), widgets.blelloch_levels(x, "logaddexp")):
        assert np.allclose(levels[-1].values[: x.size], np.logaddexp.accumulate(x), atol=1e-9)


def test_scan_level_counts_and_explorer():
    x = np.arange(1.0, 8.0)  # odd length 7: Blelloch pads to 8
    assert len(widgets.hillis_steele_levels(x)) == 1 + 3
    assert len(widgets.blelloch_levels(x)) == 1 + 3 + 1 + 3 + 1
    explorer = widgets.scan_explorer(x, "logaddexp", interactive=True)
    texts_full = [t.get_text() for t in explorer.figure.axes[0].texts]
    explorer.controls["level"].value = 0
    texts_first = [t.get_text() for t in explorer.figure.axes[0].texts]
    assert len(texts_first) < len(texts_full)  # later levels are hidden
    explorer.controls["algorithm"].value = "Blelloch"
    assert "Blelloch" in explorer.figure.axes[0].get_title()
    assert widgets.scan_explorer(x, interactive=False).figure.axes
    with pytest.raises(ValueError, match="combine"):
        widgets.hillis_steele_levels(x, "max")


def test_decode_latency_plot_from_json_and_lists(tmp_path):
    path = tmp_path / "decode.json"
    path.write_text(json.dumps({"gpu": "TestGPU", "date": "2026-01-01", "results": {
        "log": [{"context": 256, "median_s": 1e-4}, {"context": 4096, "median_s": 1e-4}],
        "softmax": [{"context": 256, "median_s": 1e-4}, {"context": 4096, "median_s": 8e-4}]}}))
    figure = widgets.decode_latency_plot(path)
    lines = figure.axes[0].get_lines()
    assert [tuple(line.get_ydata()) for line in lines] == [(100.0, 100.0), (100.0, 800.0)]
    assert "TestGPU" in figure.axes[0].get_title()
    assert widgets.decode_latency_plot({"log": [(8, 3.0), (2, 1.0)]}).axes[0].get_lines()[0].get_xdata()[0] == 2
    path.write_text(json.dumps({"results": {"log": [{"context": 1}]}}))
    with pytest.raises(ValueError, match="latency_us"):
        widgets.decode_latency_plot(path)


def test_without_a_kernel_explorers_fall_back_to_static_figures():
    assert not widgets.widgets_available()  # pytest runs no IPython kernel
    for explorer in (widgets.attention_explorer(n=4), widgets.derivation_explorer(n=3),
                     widgets.scan_explorer([1.0, 2.0, 3.0]), widgets.cost_explorer((8,), d_k=2, d_v=2, repeats=1)):
        assert not explorer.interactive and explorer.figure.axes
        assert explorer._repr_mimebundle_()["image/png"]  # what a notebook shows instead of the widget
    steps = widgets.derivation_steps(*widgets._random_qkv(5, 2, 2, 0, positive_v=True))
    figure = widgets.derivation_figure(steps, 4)
    assert _image_data(figure, 0).shape == (5, 2) and "step 5" in figure.axes[0].get_title()
