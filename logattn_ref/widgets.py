"""Interactive explorers for the lessons (ipywidgets + matplotlib), each with a static fallback.

Every explorer is a pair:

- a *figure function* (``attention_figure``, ``derivation_figure``, ``cost_figure``, ``scan_figure``) that
  draws the picture for fixed values on a :class:`matplotlib.figure.Figure` — the static fallback, usable
  anywhere (a plain script, a test, a notebook rendered without a kernel);
- an *explorer* (``attention_explorer``, ``derivation_explorer``, ``cost_explorer``, ``scan_explorer``) that
  adds sliders and redraws the same figure live. It returns an :class:`Explorer`; displaying it in a notebook
  shows the widget, or, when no widget front end is available, the static picture.

The numbers drawn are computed here from :mod:`logattn_ref.numpy_ref` (the float64 oracle), never in the
notebooks, so a lesson and its widget cannot disagree. Figures are built with ``matplotlib.figure.Figure``
rather than ``pyplot`` so that nothing is displayed twice and no global figure state leaks between cells.

Whether an explorer is interactive: ``interactive=None`` (the default) means "if ipywidgets imports and an
IPython kernel is running"; pass ``True`` or ``False`` to force it. Fast mode (``CI`` set) does not turn the
widgets off, because the course's browser test drives the lesson-1 widget; it only shrinks the sizes the
lessons pass in.
"""

from __future__ import annotations

import io
import json
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from . import numpy_ref

__all__ = [
    "Explorer",
    "widgets_available",
    "attention_weights",
    "attention_figure",
    "attention_explorer",
    "DerivationStep",
    "derivation_steps",
    "derivation_figure",
    "derivation_explorer",
    "CostMeasurement",
    "measure_call",
    "measure_cost",
    "cost_figure",
    "cost_explorer",
    "ScanLevel",
    "hillis_steele_levels",
    "blelloch_levels",
    "scan_figure",
    "scan_explorer",
    "load_decode_latency",
    "decode_latency_plot",
]


# --------------------------------------------------------------------------------------------------------
# The common frame: an Explorer holds the figure, the controls and the redraw function
# --------------------------------------------------------------------------------------------------------


def widgets_available() -> bool:
    """True when ipywidgets imports and an IPython kernel (something that can host a widget) is running."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi, bbox_inches="tight")
    return buffer.getvalue()


@dataclass
class Explorer:
    """A figure plus, when interactive, the widgets that redraw it.

    Attributes:
        figure: the matplotlib figure, redrawn in place by :attr:`update`.
        update: ``update(**values)`` redraws the figure for the given control values (the callback the
            sliders call; tests call it directly).
        controls: the named input widgets (empty when static).
        widget: the ``ipywidgets.VBox`` holding controls and picture, or ``None`` when static.
        steps: the derivation explorer's :class:`DerivationStep` list (``None`` for the others).
        levels: the scan explorer's levels per algorithm (``None`` for the others).
    """

    figure: Figure
    update: Callable[..., None]
    controls: Dict[str, object] = field(default_factory=dict)
    widget: Optional[object] = None
    steps: Optional[List["DerivationStep"]] = None
    levels: Optional[Dict[str, List["ScanLevel"]]] = None
    _output: Optional[object] = None

    @property
    def interactive(self) -> bool:
        return self.widget is not None

    def show(self) -> None:
        """Re-render the figure into the widget's output area (called after every update)."""
        from IPython import get_ipython
        from IPython.display import Image, display

        if self._output is None or get_ipython() is None:  # no kernel: nothing could show the picture
            return

        png = _figure_png(self.figure)
        with self._output:
            self._output.clear_output(wait=True)
            display(Image(data=png, format="png"))

    def _repr_mimebundle_(self, include=None, exclude=None):
        if self.widget is not None:
            return self.widget._repr_mimebundle_(include=include, exclude=exclude)
        import base64

        png = _figure_png(self.figure)
        return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": "<static figure>"}


def _resolve_interactive(interactive: Optional[bool]) -> bool:
    if interactive is None:
        return widgets_available()
    if interactive:
        try:
            import ipywidgets  # noqa: F401
        except ImportError as err:
            raise ImportError("interactive=True needs ipywidgets (pip install ipywidgets)") from err
    return bool(interactive)


def _build(figure: Figure, redraw: Callable[..., None], controls: Dict[str, object], css_class: str,
           interactive: bool, header: Optional[str] = None) -> Explorer:
    """Wire ``controls`` to ``redraw`` through an ipywidgets.Output, or return a static Explorer."""
    if not interactive:
        return Explorer(figure=figure, update=redraw)
    import ipywidgets as widgets

    output = widgets.Output()
    explorer = Explorer(figure=figure, update=redraw, controls=controls, _output=output)

    def on_change(_change=None) -> None:
        redraw(**{name: control.value for name, control in controls.items()})
        explorer.show()

    for control in controls.values():
        control.observe(on_change, names="value")
    children = ([widgets.HTML(header)] if header else []) + [widgets.HBox(list(controls.values())), output]
    box = widgets.VBox(children)
    box.add_class(css_class)
    explorer.widget = box
    explorer.update = lambda **values: (redraw(**values), explorer.show())[0]
    explorer.show()  # the figure already shows the initial values; render it once into the output area
    return explorer


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _random_qkv(n: int, d_k: int, d_v: int, seed: int, positive_v: bool = False):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, d_k))
    k = rng.standard_normal((n, d_k))
    v = rng.uniform(0.5, 2.0, (n, d_v)) if positive_v else rng.standard_normal((n, d_v))
    return q, k, v


# --------------------------------------------------------------------------------------------------------
# Lesson 1: softmax attention weights, temperature and causal masking
# --------------------------------------------------------------------------------------------------------


def attention_weights(q: ArrayLike, k: ArrayLike, temperature: float = 1.0, causal: bool = True) -> np.ndarray:
    """Softmax attention weights ``softmax_j(q_i . k_j / (sqrt(d_k) * temperature))``, masked when causal.

    Args:
        q: ``[n, d_k]``; k: ``[n, d_k]`` (float arrays). temperature: > 0; small sharpens, large flattens.

    Returns:
        ``[n, n]`` float64, each row sums to 1; entries above the diagonal are 0 when causal.
    """
    temperature = _check_positive("temperature", temperature)
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if q.ndim != 2 or k.ndim != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [n, d_k] with the same shape, got {q.shape} and {k.shape}")
    for name, x in (("q", q), ("k", k)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} must be finite, got NaN or inf in an array of shape {x.shape}")
    scores = q @ k.T / (np.sqrt(q.shape[-1]) * temperature)
    if causal:
        scores = np.where(np.tril(np.ones(scores.shape, dtype=bool)), scores, -np.inf)
    return numpy_ref.softmax(scores, axis=-1)


def attention_figure(q: ArrayLike, k: ArrayLike, temperature: float = 1.0, query: Optional[int] = None,
                     figure: Optional[Figure] = None) -> Figure:
    """Static picture: the causal weights of one query as bars, and the whole weight matrix as a heatmap.

    Args:
        q, k: ``[n, d_k]``. temperature: > 0. query: the row drawn as bars (default the last, n - 1).
        figure: draw into this figure (cleared first) instead of a new one.
    """
    weights = attention_weights(q, k, temperature)
    n = weights.shape[0]
    query = n - 1 if query is None else int(query)
    if not 0 <= query < n:
        raise ValueError(f"query must be a position in [0, {n - 1}], got {query}")
    figure = figure if figure is not None else Figure(figsize=(8.0, 3.2))
    figure.clear()
    bars_ax, heat_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    colors = ["tab:blue" if j <= query else "lightgrey" for j in range(n)]
    bars_ax.bar(np.arange(n), weights[query], color=colors)
    bars_ax.set_ylim(0, 1)
    bars_ax.set_xlabel("key position j")
    bars_ax.set_ylabel(f"weight of query {query}")
    bars_ax.set_title(f"temperature {temperature:.2f}: max weight {weights[query].max():.2f}")
    image = heat_ax.imshow(weights, vmin=0, vmax=1, cmap="viridis")
    heat_ax.axhline(query, color="red", linewidth=1.0)
    heat_ax.set_xlabel("key j")
    heat_ax.set_ylabel("query i")
    heat_ax.set_title("all weights (causal)")
    figure.colorbar(image, ax=heat_ax, fraction=0.046)
    figure.tight_layout()
    return figure


def attention_explorer(q: Optional[ArrayLike] = None, k: Optional[ArrayLike] = None, *, n: int = 12,
                       d_k: int = 4, seed: int = 0, temperature: float = 1.0, query: Optional[int] = None,
                       interactive: Optional[bool] = None) -> Explorer:
    """Sliders "temperature" and "query position" over :func:`attention_figure`.

    Args:
        q, k: ``[n, d_k]``; when omitted, standard normal with the given ``n``, ``d_k`` and ``seed``.
        temperature, query: the initial slider values. interactive: see the module docstring.

    The widget box carries the CSS class ``logattn-attention-explorer`` (the browser test finds it by that).
    """
    if q is None or k is None:
        q, k, _ = _random_qkv(n, d_k, 1, seed)
    n = np.asarray(q).shape[0]
    query = n - 1 if query is None else query
    figure = attention_figure(q, k, temperature, query)

    def redraw(temperature: float = temperature, query: int = query) -> None:
        attention_figure(q, k, temperature, query, figure=figure)

    controls = {}
    interactive = _resolve_interactive(interactive)
    if interactive:
        import ipywidgets as widgets

        controls = {
            "temperature": widgets.FloatLogSlider(value=temperature, base=10, min=-1.5, max=1.5, step=0.05,
                                                  description="temperature", continuous_update=False,
                                                  style={"description_width": "initial"}),
            "query": widgets.IntSlider(value=query, min=0, max=n - 1, description="query position",
                                       continuous_update=False, style={"description_width": "initial"}),
        }
    return _build(figure, redraw, controls, "logattn-attention-explorer", interactive)


# --------------------------------------------------------------------------------------------------------
# Lesson 2: the derivation, one algebraic step at a time
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DerivationStep:
    """One form of the attention output: its name, the formula, the tensor it builds, and the output it gives.

    ``tensor`` is the intermediate drawn as a heatmap (2-D); ``output`` is ``y``, ``[n, d_v]``, which must be
    the same for every step (that is what the step-through shows).
    """

    title: str
    formula: str
    tensor: np.ndarray
    tensor_name: str
    output: np.ndarray


def derivation_steps(q: ArrayLike, k: ArrayLike, v: ArrayLike) -> List[DerivationStep]:
    """The chain of equal forms from the definition (eq. 1) to the causal log-space form (eq. 4), on a small example.

    Args:
        q: ``[n, d_k]``; k: ``[n, d_k]``; v: ``[n, d_v]`` with v > 0 (the log-space steps take log v).

    Returns:
        the steps in order; every ``output`` equals ``numpy_ref.log_attention_quadratic(q, k, v)``.

    Raises:
        ValueError: shapes are not 2-D and matching, or v has an entry <= 0.
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    if q.ndim != 2 or k.shape != q.shape or v.ndim != 2 or v.shape[0] != q.shape[0]:
        raise ValueError(f"need q, k: [n, d_k] and v: [n, d_v], got {q.shape}, {k.shape}, {v.shape}")
    if (v <= 0).any():
        raise ValueError(f"v must be > 0 for the log-space steps, got min(v) = {v.min():.3g}")
    n = q.shape[0]
    causal = np.tril(np.ones((n, n), dtype=bool))
    steps = []

    # 1. The definition: similarity as the log of a dot product of exponentials, softmax over keys.
    sim_dot = np.log(np.exp(q) @ np.exp(k).T)  # [n, n]
    w = numpy_ref.softmax(np.where(causal, sim_dot, -np.inf), axis=-1)
    steps.append(DerivationStep("definition (eq. 1)", r"$s_{ij} = \log(\exp(q_i)\cdot\exp(k_j))$",
                                sim_dot, "s (n x n)", w @ v))
    # 2. The same similarity as a log-sum-exp over features: never overflows.
    sim_lse = numpy_ref.logsumexp(q[:, None, :] + k[None, :, :], axis=-1)
    w = numpy_ref.softmax(np.where(causal, sim_lse, -np.inf), axis=-1)
    steps.append(DerivationStep("log-sum-exp over features", r"$s_{ij} = \mathrm{LSE}_f(q_{if} + k_{jf})$",
                                sim_lse, "s (n x n)", w @ v))
    # 3. exp(s) factors: the softmax numerator is phi(q_i) . phi(k_j) with phi = exp, so the log cancels.
    kernel = np.where(causal, np.exp(q) @ np.exp(k).T, 0.0)
    steps.append(DerivationStep("linear attention, phi = exp",
                                r"$y_i = \sum_j \phi(q_i)\cdot\phi(k_j)\, v_j \,/\, \sum_j \phi(q_i)\cdot\phi(k_j)$",
                                kernel, "exp(s) masked (n x n)", (kernel @ v) / kernel.sum(-1, keepdims=True)))
    # 4. Sum over keys first: the causal state, in linear space exp(H^(S)_i) = sum_{j<=i} phi(k_j) v_j^T and
    # exp(H^(Z)_i) = sum_{j<=i} phi(k_j); the numerator S_i and denominator Z_i read it with phi(q_i).
    s_state = np.cumsum(np.exp(k)[:, :, None] * v[:, None, :], axis=0)  # [n, d_k, d_v]
    z_state = np.cumsum(np.exp(k), axis=0)  # [n, d_k]
    y = np.einsum("if,ifd->id", np.exp(q), s_state) / np.einsum("if,if->i", np.exp(q), z_state)[:, None]
    steps.append(DerivationStep("sums over keys first (state)",
                                r"$y_i = \phi(q_i)^T e^{H^{(S)}_i} \,/\, \phi(q_i)^T e^{H^{(Z)}_i}$, "
                                r"$e^{H^{(Z)}_i} = \sum_{j\leq i}\phi(k_j)$",
                                z_state, "exp(H^(Z)_i) (n x d_k)", y))
    # 5. The same state in log space, H^(S)_i and H^(Z)_i, by a cumulative LSE (eq. 4): needs v > 0.
    log_s_state = np.logaddexp.accumulate(k[:, :, None] + np.log(v)[:, None, :], axis=0)
    log_z_state = np.logaddexp.accumulate(k, axis=0)
    log_s = numpy_ref.logsumexp(q[:, :, None] + log_s_state, axis=1)  # [n, d_v]
    log_z = numpy_ref.logsumexp(q + log_z_state, axis=1)  # [n]
    steps.append(DerivationStep("log space, cumulative LSE (eq. 4)",
                                r"$H^{(Z)}_i = \mathrm{LSE}_{j\leq i} k_j$, $\log y = \log S - \log Z$",
                                log_z_state, "H^(Z)_i (n x d_k)", np.exp(log_s - log_z[:, None])))
    return steps


def derivation_figure(steps: Sequence[DerivationStep], index: int, figure: Optional[Figure] = None) -> Figure:
    """Draw step ``index``: its intermediate tensor as a heatmap and its output y next to the previous step's."""
    if not 0 <= index < len(steps):
        raise ValueError(f"index must be in [0, {len(steps) - 1}], got {index}")
    step = steps[index]
    figure = figure if figure is not None else Figure(figsize=(8.0, 3.2))
    figure.clear()
    tensor_ax, out_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    image = tensor_ax.imshow(step.tensor, cmap="magma", aspect="auto")
    figure.colorbar(image, ax=tensor_ax, fraction=0.046)
    tensor_ax.set_title(f"step {index + 1}: {step.tensor_name}", fontsize=9)
    out_ax.imshow(step.output, cmap="coolwarm", aspect="auto")
    previous = steps[index - 1].output if index > 0 else step.output
    diff = float(np.max(np.abs(step.output - previous)))
    out_ax.set_title(f"y; max |y - y(prev step)| = {diff:.1e}", fontsize=9)
    figure.suptitle(f"{step.title}:  {step.formula}", fontsize=10)
    figure.tight_layout()
    return figure


def derivation_explorer(q: Optional[ArrayLike] = None, k: Optional[ArrayLike] = None,
                        v: Optional[ArrayLike] = None, *, n: int = 6, d_k: int = 3, d_v: int = 2, seed: int = 0,
                        interactive: Optional[bool] = None) -> Explorer:
    """ToggleButtons over :func:`derivation_steps`; each step draws its tensor and checks y is unchanged."""
    if q is None or k is None or v is None:
        q, k, v = _random_qkv(n, d_k, d_v, seed, positive_v=True)
    steps = derivation_steps(q, k, v)
    figure = derivation_figure(steps, 0)

    def redraw(step: int = 0) -> None:
        derivation_figure(steps, int(step), figure=figure)

    controls = {}
    interactive = _resolve_interactive(interactive)
    if interactive:
        import ipywidgets as widgets

        controls = {"step": widgets.ToggleButtons(options=[(str(i + 1), i) for i in range(len(steps))],
                                                  value=0, description="step")}
    explorer = _build(figure, redraw, controls, "logattn-derivation-explorer", interactive)
    explorer.steps = steps  # the lesson asserts on them
    return explorer


# --------------------------------------------------------------------------------------------------------
# Lesson 3: measured time and memory of the quadratic and the linear forms
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostMeasurement:
    """Median wall time (seconds) and peak NumPy memory (bytes, via tracemalloc) of one call at length n."""

    method: str
    n: int
    seconds: float
    peak_bytes: int


COST_METHODS: Dict[str, Callable] = {
    # The definition: n x n similarities (built in bounded row blocks by the oracle), O(n^2 d_k) work.
    "quadratic": lambda q, k, v: numpy_ref.log_attention_quadratic(q, k, v, causal=True),
    # The constant-state form, chunked: O(n d_k d_v) work, memory independent of n except the output.
    "linear": lambda q, k, v: numpy_ref.log_attention(q, k, v, causal=True),
}


def measure_call(fn: Callable, *args, repeats: int = 3) -> Tuple[float, int]:
    """``(median seconds, peak bytes)`` of ``fn(*args)``: one traced call, then ``repeats`` timed ones.

    The traced call doubles as the warm-up (first-call costs are not the function's). tracemalloc sees
    NumPy's array buffers (NumPy reports them to it), so the peak is the most array memory alive at once
    during the call, the arguments excluded. The timed calls run untraced: tracing slows allocation down.
    PyTorch allocations are not seen by tracemalloc.

    Raises:
        ValueError: repeats < 1.
    """
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    fn(*args)
    _, peak = tracemalloc.get_traced_memory()
    if not was_tracing:
        tracemalloc.stop()
    times = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), int(peak - base)


def measure_cost(method: str, n: int, d_k: int = 8, d_v: int = 8, repeats: int = 3,
                 seed: int = 0) -> CostMeasurement:
    """Time and peak NumPy memory of one causal call of ``method`` on random inputs (see :func:`measure_call`).

    Raises:
        ValueError: an unknown method, or n / repeats < 1.
    """
    if method not in COST_METHODS:
        raise ValueError(f"method must be one of {sorted(COST_METHODS)}, got {method!r}")
    if int(n) < 1 or int(repeats) < 1:
        raise ValueError(f"n and repeats must be >= 1, got n={n}, repeats={repeats}")
    q, k, v = _random_qkv(int(n), d_k, d_v, seed)
    seconds, peak_bytes = measure_call(COST_METHODS[method], q, k, v, repeats=repeats)
    return CostMeasurement(method, int(n), seconds, peak_bytes)


def cost_figure(measurements: Sequence[CostMeasurement], figure: Optional[Figure] = None) -> Figure:
    """Bars of time and peak memory per method for the measurements given (one n)."""
    if not measurements:
        raise ValueError("measurements is empty")
    figure = figure if figure is not None else Figure(figsize=(8.0, 3.0))
    figure.clear()
    time_ax, mem_ax = figure.subplots(1, 2)
    names = [m.method for m in measurements]
    colors = ["tab:red" if m.method == "quadratic" else "tab:green" for m in measurements]
    time_ax.bar(names, [1e3 * m.seconds for m in measurements], color=colors)
    time_ax.set_ylabel("median time (ms)")
    mem_ax.bar(names, [m.peak_bytes / 2**20 for m in measurements], color=colors)
    mem_ax.set_ylabel("peak NumPy memory (MiB)")
    figure.suptitle(f"causal attention, n = {measurements[0].n} tokens (measured now)", fontsize=10)
    figure.tight_layout()
    return figure


def cost_explorer(n_values: Sequence[int] = (128, 256, 512, 1024, 2048), *, d_k: int = 8, d_v: int = 8,
                  repeats: int = 3, interactive: Optional[bool] = None) -> Explorer:
    """An n slider (over ``n_values``): measures both forms live at that n and draws time and memory."""
    n_values = [int(n) for n in n_values]
    if not n_values or min(n_values) < 1:
        raise ValueError(f"n_values must be positive integers, got {n_values}")

    def measure(n: int) -> List[CostMeasurement]:
        return [measure_cost(method, n, d_k, d_v, repeats) for method in COST_METHODS]

    figure = cost_figure(measure(n_values[0]))

    def redraw(n: int = n_values[0]) -> None:
        cost_figure(measure(int(n)), figure=figure)

    controls = {}
    interactive = _resolve_interactive(interactive)
    if interactive:
        import ipywidgets as widgets

        controls = {"n": widgets.SelectionSlider(options=n_values, value=n_values[0], description="n",
                                                 continuous_update=False)}
    return _build(figure, redraw, controls, "logattn-cost-explorer", interactive)


# --------------------------------------------------------------------------------------------------------
# Lesson 4: parallel prefix scans, level by level
# --------------------------------------------------------------------------------------------------------

_COMBINES: Dict[str, Tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], float]] = {
    "sum": (np.add, 0.0),
    "logaddexp": (np.logaddexp, -np.inf),  # the combine of a cumulative log-sum-exp (eq. 4; one state update, eq. 6)
}


@dataclass(frozen=True)
class ScanLevel:
    """The array after one level of a scan, and the (source, destination) pairs that combined into it."""

    name: str
    values: np.ndarray
    edges: Tuple[Tuple[int, int], ...]


def _combine(combine: Union[str, Tuple[Callable, float]]):
    if isinstance(combine, str):
        if combine not in _COMBINES:
            raise ValueError(f"combine must be one of {sorted(_COMBINES)} or (function, identity), got {combine!r}")
        return _COMBINES[combine]
    fn, identity = combine
    return fn, float(identity)


def _scan_input(array) -> np.ndarray:
    x = np.asarray(array, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"array must be a non-empty 1-D array, got shape {x.shape}")
    return x


def hillis_steele_levels(array: ArrayLike, combine: Union[str, Tuple[Callable, float]] = "sum") -> List[ScanLevel]:
    """The inclusive Hillis-Steele scan: at level d every i >= 2^d takes x[i - 2^d] (+) x[i].

    log2(n) levels of n-wide work, O(n log n) combines. The last level is the inclusive scan.
    ``combine`` is "sum", "logaddexp", or ``(function, identity)`` for an associative function.
    """
    fn, _ = _combine(combine)
    x = _scan_input(array)
    levels = [ScanLevel("input", x.copy(), ())]
    offset = 1
    while offset < x.size:
        new = x.copy()
        new[offset:] = fn(x[:-offset], x[offset:])
        edges = tuple((i - offset, i) for i in range(offset, x.size))
        levels.append(ScanLevel(f"offset {offset}", new, edges))
        x, offset = new, offset * 2
    return levels


def blelloch_levels(array: ArrayLike, combine: Union[str, Tuple[Callable, float]] = "sum") -> List[ScanLevel]:
    """The work-efficient Blelloch scan: an up-sweep (reduce) tree, a down-sweep, then add the input.

    The array is padded with the identity to a power of two (drawn too). The down-sweep yields the exclusive
    scan; a last level combines it with the input, so the final level is the inclusive scan of the original
    elements (followed by the padding). O(n) combines in 2 log2(n) levels.
    """
    fn, identity = _combine(combine)
    original = _scan_input(array)
    size = 1 << int(np.ceil(np.log2(original.size))) if original.size > 1 else 1
    x = np.full(size, identity)
    x[: original.size] = original
    padded_input = x.copy()
    levels = [ScanLevel("input (padded)", x.copy(), ())]
    stride = 1
    while stride < size:  # up-sweep: x[right] = x[left] (+) x[right] over pairs at distance stride
        rights = np.arange(2 * stride - 1, size, 2 * stride)
        x[rights] = fn(x[rights - stride], x[rights])
        levels.append(ScanLevel(f"up-sweep {stride}", x.copy(), tuple((int(r - stride), int(r)) for r in rights)))
        stride *= 2
    x[size - 1] = identity
    levels.append(ScanLevel("clear root", x.copy(), ()))
    stride = size // 2
    while stride >= 1:  # down-sweep: left <- right, right <- left (+) right
        rights = np.arange(2 * stride - 1, size, 2 * stride)
        left_values = x[rights - stride].copy()
        x[rights - stride] = x[rights]
        x[rights] = fn(left_values, x[rights])
        edges = tuple(e for r in rights for e in ((int(r), int(r - stride)), (int(r - stride), int(r))))
        levels.append(ScanLevel(f"down-sweep {stride}", x.copy(), edges))
        stride //= 2
    inclusive = fn(x, padded_input)
    levels.append(ScanLevel("exclusive (+) input", inclusive, tuple((i, i) for i in range(size))))
    return levels


def scan_figure(levels: Sequence[ScanLevel], upto: Optional[int] = None, title: str = "",
                figure: Optional[Figure] = None) -> Figure:
    """Boxes with values, one row per level (top to bottom), lines for the pairs that combined.

    Levels after ``upto`` are drawn empty so that stepping reveals them one at a time.
    """
    upto = len(levels) - 1 if upto is None else int(upto)
    if not 0 <= upto < len(levels):
        raise ValueError(f"upto must be in [0, {len(levels) - 1}], got {upto}")
    width = levels[0].values.size
    figure = figure if figure is not None else Figure(figsize=(min(1.0 + 0.8 * width, 12.0), 0.7 * len(levels) + 0.8))
    figure.clear()
    ax = figure.subplots()
    for row, level in enumerate(levels):
        y = -row
        shown = row <= upto
        for i, value in enumerate(level.values):
            ax.add_patch(_box(i, y, shown, row == upto))
            if shown:
                ax.text(i, y, "-inf" if np.isneginf(value) else f"{value:.3g}", ha="center", va="center", fontsize=8)
        if shown and row > 0:
            for src, dst in level.edges:
                ax.plot([src, dst], [y + 1 - 0.3, y + 0.3], color="tab:blue", linewidth=0.8)
        ax.text(-0.8, y, level.name, ha="right", va="center", fontsize=8)
    ax.set_xlim(-0.6, width - 0.4)
    ax.set_ylim(-len(levels) + 0.4, 0.6)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def _box(i: int, y: float, shown: bool, current: bool):
    from matplotlib.patches import Rectangle

    face = "gold" if current else ("whitesmoke" if shown else "white")
    return Rectangle((i - 0.4, y - 0.3), 0.8, 0.6, facecolor=face, edgecolor="grey" if shown else "lightgrey")


def scan_explorer(array: ArrayLike, combine: Union[str, Tuple[Callable, float]] = "sum", *,
                  interactive: Optional[bool] = None) -> Explorer:
    """Step through the levels of Hillis-Steele or Blelloch on ``array`` (a small 1-D array).

    Controls: "algorithm" (Hillis-Steele / Blelloch) and "level". The final level of either algorithm is
    the inclusive scan (np.cumsum for "sum", np.logaddexp.accumulate for "logaddexp").
    """
    builders = {"Hillis-Steele": hillis_steele_levels, "Blelloch": blelloch_levels}
    all_levels = {name: build(array, combine) for name, build in builders.items()}
    figure = scan_figure(all_levels["Hillis-Steele"], title="Hillis-Steele")

    def redraw(algorithm: str = "Hillis-Steele", level: Optional[int] = None) -> None:
        if algorithm not in all_levels:
            raise ValueError(f"algorithm must be one of {sorted(all_levels)}, got {algorithm!r}")
        levels = all_levels[algorithm]
        upto = len(levels) - 1 if level is None else min(int(level), len(levels) - 1)  # Blelloch has more
        scan_figure(levels, upto, title=f"{algorithm}, combine = {combine if isinstance(combine, str) else 'custom'}",
                    figure=figure)

    controls = {}
    interactive = _resolve_interactive(interactive)
    if interactive:
        import ipywidgets as widgets

        longest = max(len(levels) for levels in all_levels.values()) - 1
        controls = {
            "algorithm": widgets.ToggleButtons(options=list(builders), value="Hillis-Steele"),
            "level": widgets.IntSlider(value=longest, min=0, max=longest, description="level",
                                       continuous_update=False),
        }
    explorer = _build(figure, redraw, controls, "logattn-scan-explorer", interactive)
    explorer.levels = all_levels
    return explorer


# --------------------------------------------------------------------------------------------------------
# Lesson 4: decode latency against context, from a benchmark JSON
# --------------------------------------------------------------------------------------------------------

LatencySeries = Mapping[str, Sequence[Tuple[float, float]]]


def load_decode_latency(path: Union[str, Path]) -> Tuple[Dict[str, List[Tuple[float, float]]], Dict]:
    """Read ``{method: [(context, latency_us), ...]}`` and the run's metadata from a benchmark JSON.

    Accepted layout: a top-level object with the series under ``"results"`` (or ``"methods"``), each a
    list of objects holding ``"context"`` and either ``"latency_us"`` or ``"median_s"`` (the output of
    :func:`logattn_ref.generate.decode_latency`). Every other top-level key (GPU name, versions, date) is
    returned as metadata.

    Raises:
        FileNotFoundError, ValueError: the file is missing or does not have that layout.
    """
    path = Path(path)
    data = json.loads(path.read_text())
    key = "results" if "results" in data else "methods" if "methods" in data else None
    if not isinstance(data, dict) or key is None or not isinstance(data[key], dict):
        raise ValueError(f"{path}: expected an object with a 'results' mapping of method -> list of entries")
    series = {}
    for method, entries in data[key].items():
        points = []
        for entry in entries:
            if "latency_us" in entry:
                latency = float(entry["latency_us"])
            elif "median_s" in entry:
                latency = 1e6 * float(entry["median_s"])
            else:
                raise ValueError(f"{path}: an entry of {method!r} has neither 'latency_us' nor 'median_s': {entry}")
            points.append((float(entry["context"]), latency))
        series[method] = points
    return series, {k: v for k, v in data.items() if k != key}


def decode_latency_plot(source: Union[str, Path, LatencySeries], title: Optional[str] = None,
                        figure: Optional[Figure] = None) -> Figure:
    """Latency per generated token against context length, one line per method (log-log axes).

    Args:
        source: a benchmark JSON path (see :func:`load_decode_latency`), or ``{method: [(context,
            latency_us), ...]}``.
        title: default: the GPU name and date from the JSON, when present.
    """
    if isinstance(source, (str, Path)):
        series, meta = load_decode_latency(source)
        if title is None:
            title = " | ".join(str(meta[k]) for k in ("gpu", "gpu_name", "date") if k in meta) or None
    else:
        series = {m: [(float(c), float(t)) for c, t in points] for m, points in source.items()}
    if not series or not any(series.values()):
        raise ValueError("no latency measurements to draw")
    figure = figure if figure is not None else Figure(figsize=(6.0, 3.6))
    figure.clear()
    ax = figure.subplots()
    for method, points in series.items():
        points = sorted(points)
        ax.plot([c for c, _ in points], [t for _, t in points], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("latency per token (us)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure
