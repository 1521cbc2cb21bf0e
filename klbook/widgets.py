r"""The Belief-O-Meter: watch the weight of evidence pile up, one coin flip at a time (chapter 1).

A coin is flipped; two hypotheses say how likely heads is, :math:`H_1: \theta_1` and
:math:`H_2: \theta_2`. After each flip the needle and the trace show the log-odds of
:math:`H_1`, which move by the flip's weight of evidence (the gauge is linear in log-odds and
marked in posterior probability, so every bit of evidence turns the needle by the same angle,
up to ``GAUGE_BITS`` bits either way, where the needle pegs):

.. math:: \ell_n = \log\frac{\pi_0}{1-\pi_0} + \sum_{i\le n} \log\frac{p(x_i\mid H_1)}{p(x_i\mid H_2)}.

On average each flip from a coin with heads probability :math:`\theta` moves the log-odds by
:math:`I[\theta;\theta_2] - I[\theta;\theta_1]`, writing :math:`I[\theta;\theta']` for
:math:`I[\mathrm{Bern}(\theta);\mathrm{Bern}(\theta')]`; that is :math:`I[\theta_1;\theta_2]`
when :math:`H_1` is true. :class:`BeliefOMeter` is the state and the arithmetic (no browser needed),
:func:`draw_belief_o_meter` draws a state (the book's static figure and the widget both use
it), and :func:`belief_o_meter` wraps both in ipywidgets for a live notebook or Colab.
"""

from __future__ import annotations

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from klbook import _require_chapters_extra

try:  # the book's extra: pip install "klbook[chapters]"
    import ipywidgets as w
    import matplotlib.figure
except ModuleNotFoundError as err:
    _require_chapters_extra("klbook.widgets", err)

from klbook._checks import check_probability
from klbook.divergence import check_key, kl
from klbook.evidence import EvidenceTrajectory, accumulate, log_odds
from klbook.plot import COLORS, style
from klbook.units import to_bits

__all__ = ["BeliefOMeter", "draw_belief_o_meter", "belief_o_meter", "BeliefOMeterWidget"]

H1_COLOR, H2_COLOR = COLORS[2], COLORS[4]


def _coin_prob(value, name: str) -> float:
    a = np.asarray(value)
    if isinstance(value, bool) or a.shape != () or a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be one number in [0, 1]; got {value!r}")
    check_probability(a, name)
    return float(a)


def _pick(old: float | None, given, name: str) -> float:
    """The value ``given`` for a setting (checked), else the setting's ``old`` value."""
    if given is not None:
        return _coin_prob(given, name)
    if old is None:
        raise TypeError(f"{name} must be one number in [0, 1]; got None")
    return old


class BeliefOMeter:
    """The state of the Belief-O-Meter: a key, how many flips, the coin and the two hypotheses.

    Flip ``i`` is heads when ``u_i < true_heads`` with ``u_i ~ Uniform[0, 1)`` drawn from
    ``jax.random.fold_in(key, i)``: the same key gives the same flips however they are batched,
    and changing the true coin re-reads the same random numbers with the new bias.

    Args:
        key: a JAX PRNG key.
        true_heads: probability of heads of the coin actually flipped.
        h1_heads, h2_heads: probability of heads under hypotheses H1 and H2.
        prior_prob: prior probability of H1, strictly between 0 and 1.

    Raises:
        ValueError: for probabilities outside [0, 1], a prior of exactly 0 or 1, or hypotheses
            that both rule out an outcome the true coin can produce.
    """

    def __init__(self, key, true_heads=1.0, h1_heads=1.0, h2_heads=0.5, prior_prob=0.5):
        check_key(key)
        self._key = key
        self._num_flips = 0
        self.configure(true_heads=true_heads, h1_heads=h1_heads, h2_heads=h2_heads, prior_prob=prior_prob)

    def configure(self, *, true_heads=None, h1_heads=None, h2_heads=None, prior_prob=None) -> BeliefOMeter:
        """Change any of the coin, the hypotheses or the prior; the flips so far are kept."""
        names = ("true_heads", "h1_heads", "h2_heads", "prior_prob")
        old = getattr(self, "_config", (None,) * 4)
        given = (true_heads, h1_heads, h2_heads, prior_prob)
        true, h1, h2, prior = new = tuple(_pick(o, v, n) for o, v, n in zip(old, given, names, strict=True))
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior_prob must lie strictly between 0 and 1; got {prior}")
        for outcome, p_true, p1, p2 in (("heads", true, h1, h2), ("tails", 1 - true, 1 - h1, 1 - h2)):
            if p_true > 0 and p1 == 0 and p2 == 0:
                raise ValueError(
                    f"both hypotheses rule out {outcome}, which the true coin can produce: "
                    "such a flip would weigh nothing either way"
                )
        self._config = new
        return self

    true_heads = property(lambda self: self._config[0], doc="Probability of heads of the coin flipped.")
    h1_heads = property(lambda self: self._config[1], doc="Probability of heads under H1.")
    h2_heads = property(lambda self: self._config[2], doc="Probability of heads under H2.")
    prior_prob = property(lambda self: self._config[3], doc="Prior probability of H1.")
    num_flips = property(lambda self: self._num_flips, doc="How many times the coin has been flipped.")

    def flip(self, n: int = 1) -> BeliefOMeter:
        """Flip the coin ``n >= 1`` more times."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer number of flips; got {n!r}")
        self._num_flips += int(n)
        return self

    def reset(self) -> BeliefOMeter:
        """Forget every flip (the key, coin and hypotheses stay)."""
        self._num_flips = 0
        return self

    @property
    def flips(self) -> jnp.ndarray:
        """The flips so far, 1.0 for heads and 0.0 for tails, shape ``[num_flips]``."""
        index = jnp.arange(self._num_flips)
        u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(self._key, i)))(index)
        return (u < self.true_heads).astype(jnp.float32)

    def hypotheses(self) -> tuple[dist.Distribution, dist.Distribution]:
        """The Bernoulli distributions of one flip under H1 and H2."""
        return dist.Bernoulli(probs=self.h1_heads), dist.Bernoulli(probs=self.h2_heads)

    @property
    def trajectory(self) -> EvidenceTrajectory | None:
        """The evidence after each flip (``None`` before the first flip).

        Raises:
            ValueError: when the flips rule out both hypotheses (see :attr:`status`).
        """
        if self._num_flips == 0:
            return None
        return accumulate(self.flips, *self.hypotheses(), prior_prob=self.prior_prob)

    @property
    def expected_slope(self) -> float:
        r"""Mean weight of evidence for H1 per flip of the true coin, in nats.

        :math:`\langle w \rangle = I[\theta;\theta_2] - I[\theta;\theta_1]`; ``+inf`` or ``-inf``
        when the true coin can refute one hypothesis (a decisive flip will come), NaN when it can
        refute both (the two infinities cancel to nothing meaningful).
        """
        true = dist.Bernoulli(probs=self.true_heads)
        h1, h2 = self.hypotheses()
        return float(kl(true, h2)) - float(kl(true, h1))

    @property
    def status(self) -> str:
        """One line saying where belief stands (or that the flips refute both hypotheses)."""
        if self._num_flips == 0:
            return f"no flips yet; P(H1) = {self.prior_prob:.3g}"
        try:
            traj = self.trajectory
        except ValueError:
            return f"{self._num_flips} flips: they rule out both hypotheses, so neither is the true coin"
        assert traj is not None  # there are flips
        heads = int(jnp.sum(self.flips))
        ell = float(to_bits(traj.log_odds[-1]))
        p_h1 = float(traj.probability[-1])
        return f"{self._num_flips} flips ({heads} heads): log-odds {ell:+.3g} bits, P(H1) = {p_h1:.3g}"

    def __repr__(self) -> str:
        return (
            f"BeliefOMeter(true_heads={self.true_heads:.3g}, h1_heads={self.h1_heads:.3g}, "
            f"h2_heads={self.h2_heads:.3g}, prior_prob={self.prior_prob:.3g}, num_flips={self._num_flips})"
        )


def draw_belief_o_meter(meter: BeliefOMeter, axes=None):
    """Draw the needle (log-odds of H1, marked in probability) and the log-odds trace in bits.

    Args:
        meter: the state to draw.
        axes: a pair of matplotlib axes (gauge, trace); a new figure when ``None``.

    Returns:
        The matplotlib figure.
    """
    style()
    if axes is None:
        fig = matplotlib.figure.Figure(figsize=(8.0, 3.0), layout="constrained")
        axes = fig.subplots(1, 2, width_ratios=[1, 1.6])
    gauge, trace = axes
    try:
        traj = meter.trajectory
        refuted = False
    except ValueError:
        traj, refuted = None, True
    prior = float(log_odds(meter.prior_prob))
    ell = np.concatenate([[prior], [] if traj is None else np.asarray(traj.log_odds, dtype=float)])
    _draw_gauge(gauge, ell[-1], refuted)
    _draw_trace(trace, meter, ell, refuted)
    return gauge.figure


GAUGE_BITS = 10.0  # the gauge spans log-odds of -10 to +10 bits (odds of about 1000 to 1)


def _gauge_angle(bits: float) -> float:
    """Angle of the needle for log-odds in bits: linear in the log-odds, pegged beyond the range."""
    return 0.5 * np.pi * (1.0 - float(np.clip(bits, -GAUGE_BITS, GAUGE_BITS)) / GAUGE_BITS)


def _draw_gauge(ax, ell: float, refuted: bool) -> None:
    theta = np.linspace(0, np.pi, 200)
    half = len(theta) // 2
    ax.plot(np.cos(theta[half:]), np.sin(theta[half:]), color=H2_COLOR, lw=8, solid_capstyle="butt")
    ax.plot(np.cos(theta[: half + 1]), np.sin(theta[: half + 1]), color=H1_COLOR, lw=8, solid_capstyle="butt")
    for prob in (0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999):
        a = _gauge_angle(math.log2(prob / (1 - prob)))
        ax.plot([0.9 * np.cos(a), 0.82 * np.cos(a)], [0.9 * np.sin(a), 0.82 * np.sin(a)], color="0.3", lw=1)
        ax.text(1.17 * np.cos(a), 1.12 * np.sin(a), f"{prob:g}", ha="center", va="center", fontsize=7)
    if refuted:
        label = "both hypotheses refuted"
    else:
        prob = 1.0 / (1.0 + math.exp(-ell)) if math.isfinite(ell) else float(ell > 0)
        a = _gauge_angle(ell / math.log(2.0))
        ax.annotate(
            "",
            xy=(0.93 * np.cos(a), 0.93 * np.sin(a)),
            xytext=(0, 0),
            arrowprops=dict(arrowstyle="-|>", lw=2, color="0.15"),
        )
        label = f"P(H1) = {prob:.3g}"
    ax.plot([0], [0], "o", color="0.15", ms=6)
    ax.text(0, -0.2, label, ha="center", va="top")
    ax.text(-1.0, -0.12, "H2", color=H2_COLOR, ha="center", va="top", weight="bold")
    ax.text(1.0, -0.12, "H1", color=H1_COLOR, ha="center", va="top", weight="bold")
    ax.set(xlim=(-1.25, 1.25), ylim=(-0.5, 1.25), aspect="equal", title="belief in H1 (log-odds scale)")
    ax.axis("off")


def _draw_trace(ax, meter: BeliefOMeter, ell: np.ndarray, refuted: bool) -> None:
    n = np.arange(len(ell))
    bits = np.asarray(to_bits(ell), dtype=float)
    finite = np.isfinite(bits)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.plot(n[finite], bits[finite], "-o", ms=3, color=COLORS[0], label="log-odds")
    slope = meter.expected_slope
    if math.isfinite(slope) and len(n) > 1:
        ax.plot(n, bits[0] + n * float(to_bits(slope)), "--", color="0.4", label="expected")
    top = max(1.0, float(np.max(np.abs(bits[finite])))) * 1.3
    if not finite.all():  # a decisive flip: the log-odds leave the chart for good
        k = int(np.argmax(~finite))
        sign = 1.0 if bits[k] > 0 else -1.0
        ax.annotate(
            "",
            xy=(k, sign * top),
            xytext=(k - 1, bits[k - 1]),
            arrowprops=dict(arrowstyle="-|>", lw=1.5, color=COLORS[1]),
        )
        ax.text(
            k,
            sign * top,
            f"{'+' if sign > 0 else '-'}∞ at flip {k}",
            color=COLORS[1],
            ha="left",
            va="top" if sign > 0 else "bottom",
        )
    if refuted:
        ax.text(
            0.5,
            0.7,
            f"flip {meter.num_flips} or earlier rules out both hypotheses",
            transform=ax.transAxes,
            ha="center",
            va="bottom",
            color=COLORS[1],
        )
    ax.set(
        xlim=(-0.5, max(meter.num_flips, 1) + 0.5),
        ylim=(-top, top),
        xlabel="flips",
        ylabel="log-odds of H1 (bits)",
        title=f"H1: heads {meter.h1_heads:.3g}, H2: heads {meter.h2_heads:.3g}; coin: heads {meter.true_heads:.3g}",
    )
    ax.legend(loc="upper left", fontsize=8)


class BeliefOMeterWidget(w.VBox):
    """The Belief-O-Meter in ipywidgets: sliders, flip buttons, a status line and the picture.

    Attributes:
        meter: the :class:`BeliefOMeter` state the widget shows and changes.
        image: the ``ipywidgets.Image`` holding the latest :func:`draw_belief_o_meter` PNG.
    """

    def __init__(self, meter: BeliefOMeter):
        if not isinstance(meter, BeliefOMeter):
            raise TypeError(f"meter must be a BeliefOMeter; got {type(meter).__name__}")
        self.meter = meter
        self.sliders = {
            name: w.FloatSlider(
                value=getattr(meter, name), min=lo, max=hi, step=0.05, description=label, continuous_update=False
            )
            for name, label, lo, hi in (
                ("true_heads", "coin heads", 0.0, 1.0),
                ("h1_heads", "H1 heads", 0.0, 1.0),
                ("h2_heads", "H2 heads", 0.0, 1.0),
                ("prior_prob", "prior P(H1)", 0.05, 0.95),
            )
        }
        self.buttons = {n: w.Button(description=label) for n, label in ((1, "flip"), (10, "flip 10"), (0, "reset"))}
        self.image = w.Image(format="png")
        self.label = w.Label()
        for name, slider in self.sliders.items():
            slider.observe(lambda change, name=name: self.configure(**{name: change["new"]}), names="value")
        for n, button in self.buttons.items():
            button.on_click(lambda _, n=n: self.flip(n))
        sliders = list(self.sliders.values())
        super().__init__(
            [w.HBox(sliders[:2]), w.HBox(sliders[2:]), w.HBox(list(self.buttons.values())), self.label, self.image]
        )
        self.refresh()

    def configure(self, **config) -> None:
        """Apply a slider change; an impossible setting leaves the state alone and says why."""
        try:
            self.meter.configure(**config)
        except ValueError as err:
            self.label.value = f"not changed: {err}"
            return
        self.refresh()

    def flip(self, n: int) -> None:
        """Flip ``n`` more times (``n == 0`` resets) and redraw."""
        self.meter.reset() if n == 0 else self.meter.flip(n)
        self.refresh()

    def refresh(self) -> None:
        """Redraw the picture and the status line from the state."""
        self.label.value = self.meter.status
        buf = io.BytesIO()
        draw_belief_o_meter(self.meter).savefig(buf, format="png", dpi=80)
        self.image.value = buf.getvalue()

    def __repr__(self) -> str:  # deterministic text/plain for stored notebook outputs
        return f"BeliefOMeterWidget({self.meter!r})"


def belief_o_meter(key, **config) -> BeliefOMeterWidget:
    """An interactive Belief-O-Meter for a live notebook (or Colab).

    Args:
        key: a JAX PRNG key for the flips.
        **config: ``true_heads``, ``h1_heads``, ``h2_heads``, ``prior_prob`` as in
            :class:`BeliefOMeter`.

    Returns:
        A :class:`BeliefOMeterWidget`; display it (or end a cell with it) to use it.
    """
    return BeliefOMeterWidget(BeliefOMeter(key, **config))
