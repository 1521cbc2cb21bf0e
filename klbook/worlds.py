r"""The two worlds drawn side by side as graphical models, from the code the chapter trains.

Chapter 3 (and every chapter after it). The recipe compares the world as it is, P, with the
world as we wish it were, Q: two NumPyro model functions over the same random variables. A
model function *is* a graphical model, so the figure is read off the code rather than drawn by
hand, and cannot disagree with what is trained:

* a node per random variable (a NumPyro sample site; ``numpyro.factor`` sites are not variables);
* a shaded node where the world observes the variable (a site with ``obs=``, e.g. the data);
* an arrow :math:`u \to v` where the distribution of :math:`v` depends on the value of
  :math:`u` in that world, e.g. :math:`x \to z` for an encoder :math:`p(z\mid x)` and
  :math:`z \to x` for a decoder :math:`q(x\mid z)`;
* a labelled box per plate (``numpyro.plate``), around the variables inside it.

Dependencies come from provenance tracking (``numpyro.ops.provenance.eval_provenance``,
the machinery behind ``numpyro.infer.inspect.get_dependencies``): the model is traced
abstractly (no array is computed) and each site's log density is asked which values it was
computed from. ``get_dependencies`` only follows *latent* upstream sites, so it misses the
arrow out of data (``x -> z`` for an encoder that reads ``x``). Here observed values are
tracked too, both through the value ``numpyro.sample`` returns and through the model
argument they came from (``obs=x`` and then ``encoder(x)``). Networks and parameters passed
as arguments or created with ``numpyro.param`` are not random variables and draw no arrow.
Provenance is per array: if two data sites are sliced from one argument, a site that reads
either slice of the argument gets an arrow from both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.ops.provenance import eval_provenance
from numpyro.primitives import Messenger

__all__ = ["structure", "draw", "WorldGraph", "Plate"]


class Plate(NamedTuple):
    """A plate: ``size`` conditionally independent copies of the sites in it."""

    name: str
    size: int
    sites: tuple[str, ...]


class WorldGraph(NamedTuple):
    """The graphical model of one world, read off its model function.

    ``nodes`` are the sample sites in the order the model draws them; ``edges`` are
    ``(parent, child)`` pairs; ``observed`` the sites with ``obs=``; ``plates`` the plates,
    outermost first, with the sites inside each.
    """

    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    observed: frozenset[str]
    plates: tuple[Plate, ...]


def _check_model(model: Any, what: str) -> None:
    if not callable(model):
        raise TypeError(f"{what} must be a NumPyro model function; got {type(model).__name__}")


def _stand_in(site: dict):
    """Zeros of a latent site's shape and kind: only shapes matter, so nothing is sampled."""
    if site["type"] != "sample" or site["is_observed"]:
        return None
    fn = site["fn"]
    shape = tuple(site["kwargs"].get("sample_shape", ())) + tuple(fn.batch_shape) + tuple(fn.event_shape)
    return jnp.zeros(shape, dtype=int if fn.support.is_discrete else float)


def _sites(model: Callable, args: tuple, kwargs: dict) -> tuple[list[dict], dict]:
    """Sample sites (name, observed, plate frames) and their abstract values, computing nothing."""
    info: list[dict] = []

    def run():
        seeded = handlers.substitute(handlers.seed(model, 0), substitute_fn=_stand_in)
        trace = handlers.trace(seeded).get_trace(*args, **kwargs)
        info.clear()
        values = {}
        for name, site in trace.items():
            if site["type"] != "sample" or isinstance(site["fn"], dist.Unit):
                continue
            frames = sorted(site["cond_indep_stack"], key=lambda f: -f.dim)  # outermost first
            info.append({"name": name, "observed": bool(site["is_observed"]), "frames": frames})
            values[name] = site["value"]
        return values

    return info, jax.eval_shape(run)


class _Tag(Messenger):
    """Replace each sample site's value by a tracked stand-in; keep the observed values seen."""

    def __init__(self, fn, values: dict, seen_obs: dict):
        self.values, self.seen_obs = values, seen_obs
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.values:
            if msg["is_observed"]:
                self.seen_obs[msg["name"]] = msg["value"]
            msg["value"] = self.values[msg["name"]]


def _provenance(model, args, kwargs, names, values, tag_args: bool) -> tuple[dict, dict]:
    """For each site: the labels its log density depends on, and those of its observed value."""
    leaves, treedef = jax.tree.flatten((args, kwargs))
    tagged = [i for i, leaf in enumerate(leaves) if tag_args and isinstance(leaf, (jax.Array, np.ndarray))]
    inputs = {f"site{j}": values[n] for j, n in enumerate(names)}
    inputs.update({f"arg{i}": jax.ShapeDtypeStruct(np.shape(leaves[i]), leaves[i].dtype) for i in tagged})

    def log_densities(**tracked):
        new = list(leaves)
        for i in tagged:
            new[i] = tracked[f"arg{i}"]
        a, k = jax.tree.unflatten(treedef, new)
        seen: dict = {}
        stand_ins = {n: tracked[f"site{j}"] for j, n in enumerate(names)}
        with handlers.trace() as trace, handlers.seed(rng_seed=0):
            _Tag(model, stand_ins, seen)(*a, **k)
        return {n: trace[n]["fn"].log_prob(trace[n]["value"]) for n in names}, seen

    return eval_provenance(log_densities, **inputs)


def structure(model: Callable, *args: Any, **kwargs: Any) -> WorldGraph:
    """The graphical model of one world: its random variables, arrows, data and plates.

    Args:
        model: a NumPyro model function.
        *args, **kwargs: what the model is called with (data, networks, ...).

    Returns:
        :class:`WorldGraph` ``(nodes, edges, observed, plates)``.

    Raises:
        TypeError: if ``model`` is not callable.
    """
    _check_model(model, "model")
    # Only the graph is wanted, so plate broadcasting inside NumPyro's log densities is allowed
    # even where a test suite raises on rank promotion.
    with jax.numpy_rank_promotion("allow"):
        info, values = _sites(model, args, kwargs)
        names = [s["name"] for s in info]
        try:
            deps, seen = _provenance(model, args, kwargs, names, values, tag_args=True)
        except (
            jax.errors.ConcretizationTypeError,
            jax.errors.TracerArrayConversionError,
            jax.errors.TracerBoolConversionError,
            jax.errors.TracerIntegerConversionError,
        ):
            # The model computes with its arguments' concrete values (numpy, Python control
            # flow): follow dependencies through the values numpyro.sample returns only.
            deps, seen = _provenance(model, args, kwargs, names, values, tag_args=False)
    observed = frozenset(s["name"] for s in info if s["observed"])
    owners = {f"site{j}": {n} for j, n in enumerate(names)}
    for n, obs in seen.items():  # an argument an observed site takes its value from stands for it
        for lab in obs:
            if lab.startswith("arg"):
                owners.setdefault(lab, set()).add(n)
    edges = []
    for child in names:
        parents = set().union(*(owners.get(lab, set()) for lab in deps[child]))
        edges += [(p, child) for p in names if p in parents and p != child]
    plates: dict[str, list] = {}
    for s in info:
        for f in s["frames"]:
            plates.setdefault(f.name, [f.size, []])[1].append(s["name"])
    plate_list = tuple(Plate(k, int(size), tuple(sites)) for k, (size, sites) in plates.items())
    return WorldGraph(tuple(names), tuple(edges), observed, plate_list)


def _layout(graph: WorldGraph) -> dict[str, tuple[float, float]]:
    """Layered positions: row = topological depth, plate members in their own column band."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    parents = {n: [p for p, c in graph.edges if c == n] for n in graph.nodes}
    depth: dict[str, int] = {}
    while len(depth) < len(order):  # Kahn's order; a cycle is broken at the earliest site
        ready = [n for n in graph.nodes if n not in depth and all(p in depth for p in parents[n])]
        n = ready[0] if ready else min((m for m in graph.nodes if m not in depth), key=lambda m: order[m])
        depth[n] = 1 + max((depth[p] for p in parents[n] if p in depth), default=-1)
    member = {n: tuple(p.name for p in graph.plates if n in p.sites) for n in graph.nodes}
    bands = sorted(set(member.values()))
    width = {
        b: max(sum(1 for n in graph.nodes if member[n] == b and depth[n] == d) for d in set(depth.values()))
        for b in bands
    }
    start = dict(zip(bands, np.cumsum([0] + [width[b] for b in bands])[:-1], strict=True))
    pos, used = {}, {}
    for n in sorted(graph.nodes, key=lambda m: order[m]):
        col = used.get((member[n], depth[n]), 0)
        used[(member[n], depth[n])] = col + 1
        pos[n] = (float(start[member[n]] + col), -float(depth[n]))
    return pos


def _panel(ax, graph: WorldGraph, pos: dict, color: str, title: str) -> None:
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

    r, pad = 0.25, 0.42
    shade = tuple(0.65 + 0.35 * c for c in to_rgb(color))
    for plate in graph.plates:  # a plate around others leaves room for their boxes and labels
        xs = [pos[n][0] for n in plate.sites]
        ys = [pos[n][1] for n in plate.sites]
        grow = pad + 0.22 * _inner(graph, plate)
        ax.add_patch(
            FancyBboxPatch(
                (min(xs) - grow, min(ys) - grow - 0.15),
                max(xs) - min(xs) + 2 * grow,
                max(ys) - min(ys) + 2 * grow + 0.15,
                boxstyle="round,pad=0,rounding_size=0.08",
                fill=False,
                edgecolor="0.45",
                linewidth=1.0,
            )
        )
        ax.text(
            max(xs) + grow - 0.06,
            min(ys) - grow - 0.09,
            f"{plate.name} ({plate.size})",
            ha="right",
            va="bottom",
            fontsize=8,
            color="0.35",
        )
    for parent, child in graph.edges:
        a, b = np.array(pos[parent]), np.array(pos[child])
        d = (b - a) / np.linalg.norm(b - a)
        blocked = any(m not in (parent, child) and _near_segment(np.array(pos[m]), a, b, 1.2 * r) for m in graph.nodes)
        ax.add_patch(
            FancyArrowPatch(
                tuple(a + r * d),
                tuple(b - r * d),
                arrowstyle="-|>",
                mutation_scale=12,
                color=color,
                linewidth=1.4,
                connectionstyle=f"arc3,rad={0.35 if blocked else 0.0}",
            )
        )
    for n in graph.nodes:
        ax.add_patch(
            Circle(
                pos[n], r, facecolor=shade if n in graph.observed else "white", edgecolor=color, linewidth=1.6, zorder=3
            )
        )
        ax.text(*pos[n], n, ha="center", va="center", zorder=4, fontsize=max(6, 11 - max(0, len(n) - 2)))
    ax.set_title(title, color=color)


def _inner(graph: WorldGraph, plate: Plate) -> int:
    """How many plates sit inside ``plate``."""
    return sum(1 for o in graph.plates if o is not plate and set(o.sites) < set(plate.sites))


def _near_segment(p, a, b, tol) -> bool:
    t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
    return 0.0 < t < 1.0 and np.linalg.norm(a + t * (b - a) - p) < tol


def draw(
    real: Callable,
    dream: Callable,
    *args: Any,
    ax: Sequence | None = None,
    titles: tuple[str, str] = ("real world P", "dream world Q"),
    **kwargs: Any,
):
    """Draw the real world P and the dream world Q side by side as graphical models.

    Each variable sits in the same place in both panels (rows by depth in the dream world,
    the generative story), so the panels compare at a glance: shaded nodes are observed in
    that world, arrows are the dependencies of that world's code, boxes are plates. Nodes
    and arrows take the world's colour (:data:`klbook.plot.REAL`, :data:`klbook.plot.DREAM`).

    Args:
        real: NumPyro model of the world as it is.
        dream: NumPyro model of the world as we wish it were, over the same sample sites.
        *args, **kwargs: passed to both models (as in :func:`klbook.recipe.kl_objective`).
        ax: two matplotlib axes to draw into; a new figure when ``None``.
        titles: the two panel titles.

    Returns:
        ``(fig, axes)``: the figure and the two axes (P, Q).

    Raises:
        TypeError: if ``real`` or ``dream`` is not callable.
        ValueError: if the worlds are not over the same random variables (naming the sites
            only one world has), if they have none, or if ``ax`` is not two axes.
    """
    from klbook.plot import DREAM, REAL, figure

    _check_model(real, "the real world")
    _check_model(dream, "the dream world")
    if len(titles) != 2:
        raise ValueError(f"titles must be two strings (P, Q); got {titles!r}")
    graphs = structure(real, *args, **kwargs), structure(dream, *args, **kwargs)
    only_p = [n for n in graphs[0].nodes if n not in graphs[1].nodes]
    only_q = [n for n in graphs[1].nodes if n not in graphs[0].nodes]
    if only_p or only_q:
        raise ValueError(
            "the two worlds must be over the same random variables: sites only in the real world "
            f"P: {only_p}; sites only in the dream world Q: {only_q}"
        )
    if not graphs[0].nodes:
        raise ValueError("the worlds have no random variables (numpyro.sample sites) to draw")
    pos = _layout(graphs[1])
    xs, ys = zip(*pos.values(), strict=True)
    margin = 0.22 * max((_inner(g, p) for g in graphs for p in g.plates), default=0)
    if ax is None:
        w, h = max(xs) - min(xs) + 1.5 + 2 * margin, max(ys) - min(ys) + 1.7 + 2 * margin
        fig, axes = figure(ncols=2, width=min(9.0, 2 * w + 0.6), height=min(6.0, h + 0.3))
    else:
        given: list[Any] = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(given) != 2:
            raise ValueError(f"ax must be two matplotlib axes (P, Q); got {len(given)}")
        fig, axes = given[0].figure, given
    for a, graph, color, title in zip(axes, graphs, (REAL, DREAM), titles, strict=True):
        _panel(a, graph, pos, color, title)
        a.set_xlim(min(xs) - 0.75 - margin, max(xs) + 0.75 + margin)
        a.set_ylim(min(ys) - 0.85 - margin, max(ys) + 0.6 + margin)
        a.set_aspect("equal")
        a.axis("off")
    return fig, axes
