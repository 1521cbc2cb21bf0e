r"""The universal recipe: every objective is the KL divergence from the real world to the dream world.

Chapter 3. Write the world as it is, P, and the world as we wish it were, Q, as two NumPyro
model functions over the same random variables. The real world holds the data (``obs=`` sites)
and whatever we augment it with (an encoder, a noise process, ...); the dream world holds the
model we would like to be true. The objective is

.. math:: I[P;Q] = \left\langle \log\frac{p(x, z)}{q(x, z)} \right\rangle_{p(x, z)}
          = \sum_{\text{sites } s} \left\langle \log\frac{p(s\mid\cdot)}{q(s\mid\cdot)}\right\rangle_P,

a sum of one term per random variable (the chain rule of chapter 2). :func:`kl_objective` draws
every site from P (data sites take their data), scores each site under both worlds and returns a
Monte Carlo estimate of each term: the *ledger*. A latent site's term is a rate-like KL; a data
site's term is :math:`-\langle\log q(x\mid\cdot)\rangle`, a distortion, because the data's own
density :math:`p(x)` is unknown. That missing :math:`\langle \log p(x) \rangle` (minus the data's
entropy) does not depend on anything we train, so it is dropped and listed in
``KLObjective.dropped``, or measured against a base measure :math:`m(x)` the caller supplies
(appendix A): the term becomes :math:`\langle \log m(x) - \log q(x\mid\cdot)\rangle`. Passing the
true data density as ``m`` turns the data term into an exact KL. An observed site of the real
world is never scored by its own distribution, even a proper one (``numpyro.sample("x",
dist.Normal(0, 1), obs=x)`` counts as :func:`data`): to use a known density, pass it as
``base_measure={"x": dist.Normal(0, 1)}``.

Conventions.

* **Per example, of the full data set.** The plate named ``data_plate`` (default ``"data"``)
  indexes the examples. Every term is reported in nats *per example of the full data set of N
  examples*: a site inside the plate is averaged over the examples present, a global site
  (outside the plate) is divided by N. N is the plate's full size (``numpyro.plate("data", N,
  subsample_size=B)``) or, when the batches are drawn outside the model (as
  :func:`klbook.train.fit` does, so the plate's size is the batch size B), the ``data_size``
  the caller states. A global latent's term is then KL/N whatever B, so minibatch training
  optimises the same objective at every batch size: the estimate is unbiased for
  ``Trace_ELBO / N`` of the whole data set. Models with no plate at all report totals;
  ``data_plate=None`` asks for totals explicitly. If the worlds have plates but none of that
  name (a plate called ``"obs"``, a mistyped ``data_plate=``), the recipe raises rather than
  silently switch units.
* **Subsampling.** NumPyro's idiom ``with numpyro.plate("data", N, subsample_size=B) as idx:``
  works in both worlds: the dream world is run with the *real world's* indices (the plate must
  have the same size and subsample size in both worlds, or an error names it). A subsampled
  plate other than the data plate scales its sites by its ``size / subsample_size`` (so they
  estimate their full sums), as NumPyro's ELBOs do.
* **Shapes.** Each site must have the same batch and event shapes (``sample_shape`` included)
  and sit in the same plates in both worlds; otherwise an error names the site and both
  shapes, instead of broadcasting one world's density over the other's values. A data site's
  shape is its observed value's.
* **Gradients.** Reparameterisable sites carry pathwise gradients. Sites of P that are not
  reparameterisable (discrete latents, for example) get a score-function (REINFORCE) term,
  :math:`\nabla \langle f\rangle_p = \langle (f - b)\nabla\log p\rangle_p`, added to ``loss`` with
  zero value, with a leave-one-out baseline :math:`b` over particles (use ``num_particles >= 2``
  for a useful baseline; with one particle :math:`b = 0`).
* **Exact enumeration** (chapter 8). ``enumerate_sites=("y",)`` sums a small discrete latent of
  P out exactly instead of sampling it: for every value :math:`v` of its support the particle is
  run with :math:`y = v` substituted in the real world (the other sites drawn with the same
  random numbers for every :math:`v`), and each example's ledger is the average over :math:`v`
  weighted by :math:`p(y = v\mid\cdot)`. The site's own term becomes the exact
  :math:`\sum_v p(v\mid\cdot)\log p(v\mid\cdot)/q(v\mid\cdot)`, and gradients flow through the
  weights (no score function). Each enumerated site must be a latent of P with an enumerable
  support (``Categorical``, ``Bernoulli``, ...), one scalar per example in the data plate (batch
  shape ``(B,)``, event shape ``()``); every site of the worlds must lie in the data plate, and P
  must have no other non-reparameterisable latent (each would need a score function term per
  value). The cost is one pass per value (per combination of values with several sites).
* **Weights.** ``weights={"rate": beta}`` multiplies a named term in ``loss`` (β-VAE, VIB, ...);
  ``total`` stays the unweighted sum, the KL itself. ``handlers.scale`` is ignored: use weights.
* **Standard errors** come in two kinds, for two questions. ``stderr`` answers "how far is the
  estimate from the expectation under P, the examples being draws from P too?": when every
  random site of P lies in the data plate, it is the spread between examples of each example's
  average over particles, over :math:`\sqrt{U}` (this includes the Monte Carlo noise). ``mc_stderr``
  answers "how far is it from the same average over *these* examples, computed exactly?" (the
  question when comparing with a closed form on the same data): the spread between particles,
  pooled over examples, which needs ``num_particles >= 2`` (``nan`` otherwise). When P has global
  random sites the examples are not independent, and both are the spread between particles'
  totals (``nan`` with a single particle).
* **Point masses.** A latent of P drawn from a point mass (``dist.Delta``, a deterministic
  encoder, say) has no density: where the dream world gives the same site a density (a
  continuous support), its term :math:`\langle\log p(z)/q(z)\rangle` is :math:`+\infty`, and
  scoring the point mass as ``log p = 0`` would return a finite number that is not the KL. The
  recipe refuses such a site and names it. To train the familiar finite objective anyway (MAP
  estimation of a global site, a deterministic autoencoder's code), say so:
  ``point_masses=("z",)`` scores the site by :math:`-\log q(z)` alone and lists it in
  ``KLObjective.dropped``, the infinite :math:`\langle\log p(z)\rangle` being dropped as a
  constant, as a data site's unknown density is. A point mass against a dream site with a
  discrete support (a probability, not a density) is an ordinary, finite term.
* **Masks** (``handlers.mask``, ``obs_mask``) are refused with an error: a masked site would
  silently drop terms from the ledger.
* **Model arguments.** ``kl_objective(key, real, dream, *args, model_kwargs={...})``: positional
  arguments after the two worlds go to both models, keyword arguments for the models go in the
  ``model_kwargs`` dict. The recipe's own options are keyword-only and never reach the models,
  so a model may take ``weights=`` or ``names=`` of its own.

Call it inside ``jax.jit`` (the model functions are Python closures, traced once). Every check on
the *structure* (sites, shapes, plates, names, weights, base measures, sizes) runs while the
models are traced, so it raises the same error eagerly and under ``jax.jit``; the *values*
(a NaN parameter, say) are not checked here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers

from klbook.divergence import check_key

__all__ = ["kl_objective", "KLObjective", "data", "sample_sites"]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["loss", "total", "terms", "stderr", "mc_stderr"],
    meta_fields=["dropped"],
)
@dataclasses.dataclass(frozen=True)
class KLObjective:
    """The recipe's estimate of I[P;Q], term by term (all in nats; per example with a data plate).

    A pytree (``dropped`` is static), so it can be returned from ``jax.jit``.
    """

    loss: jnp.ndarray
    """Scalar to minimise: the weighted sum of terms (plus zero-valued score-function terms)."""
    total: jnp.ndarray
    """Unweighted sum of the terms: the KL estimate, up to the ``dropped`` constants."""
    terms: dict[str, jnp.ndarray]
    """Each named term's estimate, a scalar."""
    stderr: dict[str, jnp.ndarray]
    """Standard error of each term and of ``"total"`` as estimates of the expectation under P,
    examples and draws both random (see the module's conventions)."""
    mc_stderr: dict[str, jnp.ndarray]
    """Monte Carlo standard error of each term and of ``"total"`` given the data: the error of
    the estimate against the same average over these examples computed exactly (``nan`` with
    one particle)."""
    dropped: tuple[str, ...]
    """Sites whose ``<log p>`` was dropped as a constant: data sites (their unknown density), and
    the point-mass latents named in ``point_masses=`` (their infinite one)."""


def sample_sites(model: Callable, key, *args, **kwargs) -> dict[str, dict]:
    """Run ``model`` once with ``key`` and return its sample sites (name -> NumPyro site dict)."""
    trace = handlers.trace(handlers.seed(model, key)).get_trace(*args, **kwargs)
    return {name: site for name, site in trace.items() if site["type"] == "sample"}


def _trace(model: Callable, key, args, kwargs, substitute_fn=None) -> tuple[dict, dict]:
    """Run ``model`` once: its sample sites and its plates (name -> NumPyro site dict)."""
    if substitute_fn is not None:
        model = handlers.substitute(model, substitute_fn=substitute_fn)
    trace = handlers.trace(handlers.seed(model, key)).get_trace(*args, **kwargs)
    sites = {n: s for n, s in trace.items() if s["type"] == "sample"}
    plates = {n: s for n, s in trace.items() if s["type"] == "plate"}
    return sites, plates


def _plate_sizes(site: dict) -> tuple[int, int]:
    """``(size, subsample_size)`` of a plate site (``subsample_size = size`` when not subsampled)."""
    size, subsample = site["args"]
    return int(size), int(size if subsample is None else subsample)


def _frames(site: dict) -> dict[str, int]:
    """The plates a site sits in: plate name -> batch dim (negative)."""
    return {f.name: f.dim for f in site["cond_indep_stack"]}


def _shapes(site: dict, observed: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(batch_shape, event_shape)`` of a site as the recipe scores it.

    A latent site's batch shape is its ``sample_shape`` plus its distribution's batch shape; a
    data site's is that broadcast with its observed value's (NumPyro broadcasts ``log_prob``).
    """
    fn = site["fn"]
    event = tuple(fn.event_shape)
    batch = tuple(site["kwargs"].get("sample_shape", ())) + tuple(fn.batch_shape)
    if observed:
        value_shape = jnp.shape(site["value"])
        try:
            batch = jnp.broadcast_shapes(batch, value_shape[: len(value_shape) - len(event)])
        except ValueError:
            pass  # reported by _check_worlds as a shape mismatch
    return batch, event


def _per_unit(log_density: jnp.ndarray, shape: tuple[int, ...], dim: int | None) -> jnp.ndarray | None:
    """Reduce a site's log-density (batch ``shape``) to one value per example (None if global)."""
    if dim is None:
        return None
    lp = jnp.moveaxis(jnp.reshape(log_density, shape), len(shape) + dim, 0)
    return jnp.sum(lp.reshape(lp.shape[0], -1), axis=1)


def _log_base(measure, value):
    if isinstance(measure, dist.Distribution):
        return measure.log_prob(value)
    return measure(value)


def _describe(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> str:
    return f"batch shape {shapes[0]}, event shape {shapes[1]}"


def _is_point_mass(fn) -> bool:
    """A Delta, possibly behind Independent / expand / mask wrappers."""
    while not isinstance(fn, dist.Delta) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


def _check_worlds(
    real_sites: dict, dream_sites: dict, real_plates: dict, dream_plates: dict, point_masses=frozenset()
) -> None:
    """Same sites, same shapes, same plates and the same subsampling in both worlds; no point mass
    of P scored against a density of Q unless the caller named it in ``point_masses``."""
    only_real = sorted(set(real_sites) - set(dream_sites))
    only_dream = sorted(set(dream_sites) - set(real_sites))
    if only_real or only_dream:
        parts = []
        if only_real:
            parts.append(f"sites {only_real} are in the real world but not the dream world")
        if only_dream:
            parts.append(f"sites {only_dream} are in the dream world but not the real world")
        raise ValueError("the two worlds must be over the same random variables: " + "; ".join(parts))
    for name, site in dream_sites.items():
        if site["is_observed"] and not real_sites[name]["is_observed"]:
            raise ValueError(
                f"site {name!r} is observed in the dream world but drawn in the real world: the dream "
                "world must score the real world's value, so sample it there without obs="
            )
    for world, sites in (("real", real_sites), ("dream", dream_sites)):
        masked = sorted(
            n
            for n, site in sites.items()
            if site.get("mask") is not None or isinstance(site["fn"], dist.MaskedDistribution)
        )
        if masked:
            raise ValueError(
                f"sites {masked} of the {world} world are masked (handlers.mask or obs_mask): the "
                "ledger would silently drop their masked entries; select the data you mean instead"
            )
    for name in sorted(set(real_plates) | set(dream_plates)):
        sizes = {w: _plate_sizes(p[name]) for w, p in (("real", real_plates), ("dream", dream_plates)) if name in p}
        subsampled = any(size != sub for size, sub in sizes.values())
        if subsampled and (len(sizes) < 2 or sizes["real"] != sizes["dream"]):
            said = "; ".join(f"{w} world: size {s[0]}, subsample_size {s[1]}" for w, s in sizes.items())
            missing = [w for w in ("real", "dream") if w not in sizes]
            said += "".join(f"; absent from the {w} world" for w in missing)
            raise ValueError(
                f"plate {name!r} is subsampled but not the same way in both worlds ({said}): declare "
                f"numpyro.plate({name!r}, N, subsample_size=B) with the same N and B in both, so the "
                "dream world scores the real world's minibatch"
            )
    not_point = sorted(
        n
        for n in point_masses
        if n not in real_sites or real_sites[n]["is_observed"] or not _is_point_mass(real_sites[n]["fn"])
    )
    if not_point:
        raise ValueError(
            f"point_masses names {not_point}, which are not point-mass (dist.Delta) latents of the real "
            "world: only a latent drawn from a point mass has an infinite term to drop"
        )
    for name, p_site in real_sites.items():
        q_site = dream_sites[name]
        observed = p_site["is_observed"]
        p_shapes, q_shapes = _shapes(p_site, observed), _shapes(q_site, observed)
        if p_shapes != q_shapes:
            hint = (
                " (declare a data site's event dims with klbook.recipe.data(name, value, event_dim=...))"
                if observed
                else ""
            )
            raise ValueError(
                f"site {name!r} has {_describe(p_shapes)} in the real world but {_describe(q_shapes)} in "
                f"the dream world: a site must have the same shape in both worlds, or one world's "
                f"density would be broadcast over the other's values{hint}"
            )
        p_frames, q_frames = _frames(p_site), _frames(q_site)
        if p_frames != q_frames:
            raise ValueError(
                f"site {name!r} is in plates {sorted(p_frames)} in the real world but {sorted(q_frames)} "
                "in the dream world (or at other dims): put it in the same plates in both worlds"
            )
        if observed:
            _check_value_in_plates(name, p_site)
        elif name not in point_masses and _is_point_mass(p_site["fn"]) and not q_site["fn"].support.is_discrete:
            raise ValueError(
                f"site {name!r} is a point mass (dist.Delta) in the real world but has a density in the "
                f"dream world, so its term <log p({name})/q({name})> is infinite: a point mass has no "
                "density to score. Give the site a spread in the real world (a Normal encoder), or, to "
                "train the finite objective that drops the infinite constant (MAP estimation, a "
                f"deterministic code), pass point_masses=({name!r},)"
            )


def _check_value_in_plates(name: str, site: dict) -> None:
    """An observed value must have, at each of its plates' dims, exactly that plate's size.

    NumPyro broadcasts a value against its plates: a column ``x[:, None]`` of shape ``[N, 1]`` in
    a plate of size N (dim -1) is scored as an ``[N, N]`` grid of every example against every
    other, in *both* worlds, so comparing the two worlds' shapes cannot see it. The plates say
    what shape the value must have; anything else is refused, naming the site and both shapes.
    """
    value_shape = tuple(jnp.shape(site["value"]))
    event = tuple(site["fn"].event_shape)
    batch = value_shape[: len(value_shape) - len(event)] if event else value_shape
    frames = site["cond_indep_stack"]
    if not frames:
        return
    width = max(-f.dim for f in frames)
    implied = [None] * width  # the batch shape the plates imply, right-aligned (None: any size)
    for f in frames:
        implied[width + f.dim] = int(f.size)
    ok = len(batch) >= width and all(
        size is None or batch[len(batch) - width + i] == size for i, size in enumerate(implied)
    )
    if not ok:
        plates = ", ".join(f"{f.name!r} (size {int(f.size)} at dim {f.dim})" for f in frames)
        wanted = "(" + ", ".join("..." if s is None else str(s) for s in implied) + (",)" if width == 1 else ")")
        raise ValueError(
            f"site {name!r} is observed with a value of shape {value_shape} (batch part {batch}, event "
            f"shape {event}) inside plates {plates}, which imply a batch shape ending in {wanted}: "
            "NumPyro would broadcast the value against the plate and score every example against "
            "every other. Pass the value with the plate's shape (e.g. x rather than x[:, None]), or "
            "declare trailing dims as event dims (klbook.recipe.data(name, x, event_dim=1))"
        )


def data(name: str, value, event_dim: int = 0):
    """Declare a data site of the real world: ``value`` is observed, its density unknown.

    A ``numpyro.sample`` with ``obs=value`` under an improper flat density (log density 0): the
    recipe never scores the real world's density of data, it drops it as a constant or measures
    it against a base measure. Use inside the data plate, e.g.
    ``with numpyro.plate("data", n): data("x", x, event_dim=1)``.
    """
    import numpyro
    from numpyro.distributions import constraints

    value = jnp.asarray(value)
    if not isinstance(event_dim, int) or not 0 <= event_dim <= value.ndim:
        raise ValueError(f"event_dim must be an int in [0, {value.ndim}]; got {event_dim!r}")
    split = value.ndim - event_dim
    fn = dist.ImproperUniform(constraints.real, value.shape[:split], value.shape[split:])
    return numpyro.sample(name, fn, obs=value)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What one traced particle says about the worlds (static Python values, no arrays)."""

    observed: dict[str, bool]
    plates: dict[str, tuple[int, int]]  # plate name -> (size, subsample_size), both worlds
    frames: dict[str, dict[str, int]]  # site -> plate name -> dim
    shapes: dict[str, tuple[int, ...]]  # site -> batch shape


def _one_particle(key, real, dream, args, kwargs, plate, base_measure, scales, fixed=None, point_masses=frozenset()):
    """One draw from P scored under both worlds.

    ``scales`` maps a site to the factor its log-ratio is multiplied by (``size / subsample``
    of its subsampled plates other than the data plate); ``None`` while the structure is
    still unknown (the first trace). ``fixed`` maps enumerated latent sites to the values
    substituted for them in P (their term then carries no score function). Returns ``{site:
    (per_unit [U] or None, global scalar or None, score log p or None)}`` and the static
    :class:`_Layout`, and ``{site: per-unit log p(site)}`` of the ``fixed`` sites (empty without).
    """
    key_real, key_dream = jax.random.split(key)
    real_sites, real_plates = _trace(
        real,
        key_real,
        args,
        kwargs,
        substitute_fn=None
        if not fixed
        else lambda msg: fixed.get(msg["name"]) if msg["type"] == "sample" and not msg["is_observed"] else None,
    )
    values = {n: s["value"] for n, s in real_sites.items()}
    plate_sizes = {n: _plate_sizes(s) for n, s in real_plates.items()}

    def same_draw(msg):  # the real world's values, and its minibatch indices for the same plate
        if msg["type"] == "sample":
            return values.get(msg["name"])
        if msg["type"] == "plate" and msg["name"] in real_plates:
            size, sub = msg["args"]
            if plate_sizes[msg["name"]] == (int(size), int(size if sub is None else sub)):
                return real_plates[msg["name"]]["value"]
        return None

    dream_sites, dream_plates = _trace(dream, key_dream, args, kwargs, substitute_fn=same_draw)
    _check_worlds(real_sites, dream_sites, real_plates, dream_plates, point_masses)
    plate_sizes.update({n: _plate_sizes(s) for n, s in dream_plates.items() if n not in plate_sizes})
    out, frames, shapes, fixed_log_p = {}, {}, {}, {}
    for name, p_site in real_sites.items():
        q_site = dream_sites[name]
        value = p_site["value"]
        observed = p_site["is_observed"]
        shape = _shapes(p_site, observed)[0]
        log_q = q_site["fn"].log_prob(value)
        score = None
        if observed:
            # The data's own density is unknown: 0 (dropped) or a base measure m(x).
            log_p = _log_base(base_measure[name], value) if name in base_measure else 0.0
            if name in base_measure and jnp.broadcast_shapes(jnp.shape(log_p), shape) != shape:
                raise ValueError(
                    f"base_measure[{name!r}] gives log m(x) of shape {jnp.shape(log_p)}; site {name!r} "
                    f"has batch shape {shape}: give one log density per batch element (set the "
                    "measure's event shape to the site's)"
                )
        elif name in point_masses:
            log_p = 0.0  # the point mass's infinite <log p> is dropped (point_masses=)
        else:
            log_p = p_site["fn"].log_prob(value)
            score = None if p_site["fn"].has_rsample or (fixed and name in fixed) else log_p
        ratio = jnp.broadcast_to(log_p - log_q, shape)
        if scales is not None and scales[name] != 1.0:
            ratio = ratio * scales[name]
        dim = _frames(p_site).get(plate) if plate is not None else None
        unit = _per_unit(ratio, shape, dim)
        if score is not None:
            per = _per_unit(jnp.broadcast_to(score, shape), shape, dim)
            score = jnp.sum(score) if per is None else per
        out[name] = (unit, None if unit is not None else jnp.sum(ratio), score)
        frames[name], shapes[name] = _frames(p_site), shape
        if fixed and name in fixed:
            fixed_log_p[name] = _per_unit(jnp.broadcast_to(log_p, shape), shape, dim)
    layout = _Layout({n: s["is_observed"] for n, s in real_sites.items()}, plate_sizes, frames, shapes)
    return out, layout, fixed_log_p


def _check_enumerate(sites, real, key, args, kwargs, layout, plate, first) -> dict[str, jnp.ndarray]:
    """The support of each site to enumerate (name -> values ``[V]``), after checking it can be."""
    if isinstance(sites, str) or not all(isinstance(n, str) for n in sites):
        raise TypeError(f"enumerate_sites must be a tuple of site names, e.g. ('y',); got {sites!r}")
    sites = tuple(sites)
    if not sites:
        return {}
    unknown = sorted(set(sites) - set(layout.observed))
    if unknown:
        raise ValueError(
            f"enumerate_sites refers to sites {unknown} that the worlds do not have; sites: {sorted(layout.observed)}"
        )
    observed = sorted(n for n in sites if layout.observed[n])
    if observed:
        raise ValueError(
            f"enumerate_sites {observed} are data sites of the real world: only latent "
            "sites of P (drawn, not observed) can be summed out"
        )
    outside = sorted(n for n, fr in layout.frames.items() if plate is None or plate not in fr)
    if outside:
        raise ValueError(
            f"enumerating needs every site in the data plate, one ledger per example; sites {outside} are outside it"
        )
    real_sites = sample_sites(real, key, *args, **kwargs)
    support = {}
    for name in sites:
        fn = real_sites[name]["fn"]
        shape = layout.shapes[name]
        if not fn.has_enumerate_support or fn.event_shape != () or len(shape) != 1:
            raise ValueError(
                f"site {name!r} cannot be enumerated: it needs a discrete distribution with an "
                f"enumerable support (Categorical, Bernoulli, ...), one scalar per example (batch "
                f"shape (B,), event shape ()); it has {type(fn).__name__} with {_describe((shape, fn.event_shape))}"
            )
        support[name] = jnp.reshape(fn.enumerate_support(expand=False), (-1,))
    others = sorted(n for n, (_, _, score) in first.items() if score is not None and n not in sites)
    if others:
        raise NotImplementedError(
            f"sites {others} of the real world are not reparameterisable and are not enumerated: "
            "enumerate them too (enumerate_sites) or drop enumerate_sites to use score functions"
        )
    return support


_DEFAULT_PLATE = "data"


class _DefaultPlate(str):
    """The default ``data_plate``: ``"data"``, but allowed to be absent when no plate exists."""


def kl_objective(
    key,
    real: Callable,
    dream: Callable,
    *args: Any,
    model_kwargs: Mapping[str, Any] | None = None,
    names: Mapping[str, str] | None = None,
    weights: Mapping[str, float] | None = None,
    num_particles: int = 1,
    data_plate: str | None = _DefaultPlate(_DEFAULT_PLATE),
    data_size: int | None = None,
    base_measure: Mapping[str, Any] | None = None,
    enumerate_sites: tuple[str, ...] | list[str] = (),
    point_masses: tuple[str, ...] | list[str] = (),
    **unexpected: Any,
) -> KLObjective:
    r"""Monte Carlo estimate of :math:`I[P;Q]` split into named terms (the ledger).

    .. math:: \widehat{I} = \frac1K\sum_{k=1}^K \sum_s \log\frac{p(s_k\mid\cdot)}{q(s_k\mid\cdot)},
              \qquad (x, z)_k \sim P,

    reported per example of the full data set: a site in the data plate is averaged over the
    B examples present, a global site is divided by N (see *Per example* and *Subsampling* in
    the module's conventions). With the data plate subsampled, ``numpyro.plate("data", N,
    subsample_size=B)``, the dream world gets the real world's indices and N is the plate's
    full size. When the batch is drawn outside the model (:func:`klbook.train.fit`), the plate
    holds the B examples of the batch; pass ``data_size=N`` so that a global latent's term is
    KL/N at every batch size (without it, N is taken to be the plate's size B and a global
    term is KL/B, which depends on the batch size). For models with only per-example sites the
    two agree and ``data_size`` may be left out.

    Args:
        key: JAX PRNG key (split per particle and per world).
        real: NumPyro model of the world as it is; data enters through ``obs=`` sites.
        dream: NumPyro model of the world as we wish it were, over the same sample sites.
        *args: positional arguments passed to both models.
        model_kwargs: keyword arguments passed to both models (a dict; keyword arguments of
            ``kl_objective`` itself are never passed on, so a model may take ``weights=``).
        names: site -> term name, e.g. ``{"z": "rate", "x": "distortion"}``; sites sharing a
            name are summed into one term; unnamed sites keep their site name.
        weights: term name -> weight in ``loss`` (default 1 for every term).
        num_particles: independent draws from P, ``K >= 1``.
        data_plate: name of the plate that indexes the examples (default ``"data"``); ``None``
            for totals. Must name a plate of the worlds, except that with the default and
            no plate at all the terms are totals.
        data_size: N, the number of examples in the full data set, when the batch is drawn
            outside the model; default: the data plate's full size.
        base_measure: data site -> a NumPyro distribution or a callable ``x -> log m(x)``.
        enumerate_sites: discrete latent sites of P to sum out exactly, one pass per value of
            their support, instead of sampling them (see *Exact enumeration* in the module's
            conventions; chapter 8).
        point_masses: latent sites of P drawn from a point mass (``dist.Delta``) that the
            caller knows to have an infinite term against the dream world's density, to be
            scored by :math:`-\log q` alone with the infinite constant dropped (listed in
            ``dropped``): MAP estimation, a deterministic code. Without it such a site is refused
            (see *Point masses* in the module's conventions).

    Returns:
        :class:`KLObjective` ``(loss, total, terms, stderr, mc_stderr, dropped)``.

    Raises:
        ValueError: if the worlds' sample sites differ (naming them); a site has different
            shapes or plates in the two worlds (naming it and both shapes); a subsampled plate
            is not subsampled the same way in both worlds; ``data_plate`` names no plate of the
            worlds; ``data_size`` is not a positive integer, is given without a data plate or
            contradicts a subsampled data plate's size; a name, weight or base measure refers to
            something that does not exist; ``num_particles < 1``; or an enumerated site is
            not a per-example scalar latent of P with an enumerable support, a site lies outside
            the data plate, or P has another non-reparameterisable latent while enumerating; a
            latent of P is a point mass where Q has a density (its term is infinite) and is not
            in ``point_masses``, or ``point_masses`` names a site that is not a point-mass latent
            of P.
        TypeError: if ``key`` is not a PRNG key, a world is not callable, or a keyword argument
            meant for the models is passed directly (put it in ``model_kwargs``), or
            ``enumerate_sites`` or ``point_masses`` is not a tuple of names.
        NotImplementedError: if P has a non-reparameterisable latent that is not enumerated
            while another is (it would need a score-function term per enumerated value).

    All of these are raised while the models are traced: eagerly, and the same under
    ``jax.jit`` (they depend on shapes and structure only). The values are not checked: a
    model whose parameters are invalid gives what NumPyro's densities give (often NaN).
    """
    if unexpected:
        raise TypeError(
            f"kl_objective got keyword arguments {sorted(unexpected)} that are not its own "
            "options; keyword arguments for the models go in model_kwargs, e.g. "
            f"kl_objective(key, real, dream, *args, model_kwargs={{{next(iter(sorted(unexpected)))!r}: ...}})"
        )
    check_key(key)
    for fn, what in ((real, "real"), (dream, "dream")):
        if not callable(fn):
            raise TypeError(f"the {what} world must be a NumPyro model function; got {type(fn).__name__}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer; got {num_particles!r}")
    if data_plate is not None and not isinstance(data_plate, str):
        raise TypeError(f"data_plate must be a plate's name or None; got {data_plate!r}")
    if data_size is not None and (
        isinstance(data_size, bool) or not isinstance(data_size, (int, np.integer)) or data_size < 1
    ):
        raise ValueError(f"data_size must be a positive integer (the number of examples N); got {data_size!r}")
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(
            f"model_kwargs must be a dict of keyword arguments for the models; got {type(model_kwargs).__name__}"
        )
    kwargs = dict(model_kwargs or {})
    for option, value, what in (
        ("names", names, "site names to term names, e.g. names={'z': 'rate'}"),
        ("weights", weights, "term names to numbers, e.g. weights={'rate': beta}"),
        ("base_measure", base_measure, "data sites to densities, e.g. base_measure={'x': dist.Normal(0, 1)}"),
    ):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(
                f"kl_objective's {option}= maps {what}; got {type(value).__name__}. A keyword argument "
                f"of the models that is also called {option!r} goes in model_kwargs={{{option!r}: ...}}"
            )
    names, weights, base_measure = dict(names or {}), dict(weights or {}), dict(base_measure or {})

    if isinstance(point_masses, str) or not isinstance(point_masses, (tuple, list)):
        raise TypeError(f"point_masses must be a tuple of site names, e.g. ('z',); got {point_masses!r}")
    point_set = frozenset(point_masses)

    keys = jax.random.split(key, num_particles)
    # Trace the first particle outside any vmap to learn the structure (sites, plates) and check
    # the arguments. With one particle and nothing to rescale this is the whole computation: a
    # vmap over an axis of size 1 would make XLA fuse the step differently and cost ~20%
    # (benchmarks/README.md).
    first, layout, _ = _one_particle(
        keys[0], real, dream, args, kwargs, data_plate, base_measure, None, point_masses=point_set
    )
    plate = data_plate
    if plate is not None and plate not in layout.plates:
        if layout.plates or not isinstance(data_plate, _DefaultPlate):
            raise ValueError(
                f"data_plate={data_plate!r} names no plate of the worlds (their plates: "
                f"{sorted(layout.plates)}): the terms would silently become totals instead of per "
                f"example. Pass data_plate=<the plate that indexes the examples>, or data_plate=None "
                "for totals"
            )
        plate = None  # no plates at all: totals, as documented
    if plate is None and data_size is not None:
        raise ValueError(
            "data_size was given but there is no data plate to average over: put the "
            "per-example sites in numpyro.plate('data', B) (or name it with data_plate=)"
        )
    n = 1
    if plate is not None:
        size, sub = layout.plates[plate]
        if data_size is not None and sub != size and data_size != size:
            raise ValueError(
                f"data_size={data_size} contradicts the subsampled plate {plate!r}, which has "
                f"N = {size} examples (subsample_size {sub}); leave data_size out"
            )
        n = int(data_size) if data_size is not None else size
    # Subsampled plates other than the data plate: scale their sites up to full sums.
    scales = {}
    for site, frames in layout.frames.items():
        factor = 1.0
        for name in frames:
            size, sub = layout.plates[name]
            if name != plate and sub != size:
                factor *= size / sub
        scales[site] = factor
    rescale = any(f != 1.0 for f in scales.values())

    structure = first
    unknown = sorted(set(names) - set(structure))
    if unknown:
        raise ValueError(f"names refers to sites {unknown} that the worlds do not have; sites: {sorted(structure)}")
    observed = layout.observed
    not_data = sorted(s for s in base_measure if s not in observed or not observed[s])
    if not_data:
        raise ValueError(f"base_measure is for data (observed) sites of the real world; {not_data} are not")
    term_of: dict[str, str] = {site: names[site] if site in names else site for site in structure}
    unknown_w = sorted(set(weights) - set(term_of.values()))
    if unknown_w:
        raise ValueError(f"weights refers to terms {unknown_w}; the terms are {sorted(set(term_of.values()))}")
    dropped = tuple(s for s in structure if (observed[s] and s not in base_measure) or s in point_set)

    enumerated = _check_enumerate(enumerate_sites, real, keys[0], args, kwargs, layout, plate, first)

    def sampled(k):  # one draw from P
        return _one_particle(k, real, dream, args, kwargs, plate, base_measure, scales, point_masses=point_set)[0]

    def summed(k):  # every combination of the enumerated values, weighted by P
        grids = jnp.meshgrid(*[values for values in enumerated.values()], indexing="ij")
        combos = {n: g.reshape(-1) for n, g in zip(enumerated, grids, strict=True)}  # [V] each

        def at(vals):
            fixed = {n: jnp.broadcast_to(v, layout.shapes[n]) for n, v in vals.items()}
            out, _, log_p = _one_particle(k, real, dream, args, kwargs, plate, base_measure, scales, fixed, point_set)
            return out, sum(log_p.values())  # [U] log p of this combination

        outs, log_w = jax.vmap(at)(combos)  # [V, U] per site, [V, U]
        w = jnp.exp(log_w)
        return {n: (jnp.sum(w * unit, axis=0), None, score) for n, (unit, _, score) in outs.items()}

    particle = summed if enumerated else sampled
    if enumerated:
        parts = jax.vmap(particle)(keys)
    elif num_particles == 1:
        parts = jax.tree.map(lambda a: a[None], particle(keys[0]) if rescale else first)
    else:
        parts = jax.vmap(particle)(keys)

    has_units = plate is not None and any(parts[s][0] is not None for s in parts)
    has_global_random = any(parts[s][0] is None and not observed[s] for s in parts)

    def units_of(site):  # [K, U] per-unit contribution of a site (global sites shared out)
        unit, glob, _ = parts[site]
        if unit is not None:
            return unit
        assert glob is not None  # a site without per-unit terms has a global one
        width = next(u.shape[1] for u, _, _ in parts.values() if u is not None) if has_units else 1
        return jnp.broadcast_to(glob[:, None] / n, (num_particles, width))

    nan = jnp.asarray(jnp.nan)

    def between_particles(u):  # u: [K, U]; the particles' totals are the independent replicates
        if num_particles < 2:
            return nan
        return jnp.std(jnp.mean(u, axis=1), ddof=1) / jnp.sqrt(num_particles)

    def stderr_of(u):  # examples and draws random: spread of the per-example averages
        if has_global_random or not has_units:
            return between_particles(u)
        if u.shape[1] < 2:
            return nan
        return jnp.std(jnp.mean(u, axis=0), ddof=1) / jnp.sqrt(u.shape[1])

    def mc_stderr_of(u):  # the data fixed: spread between particles within each example, pooled
        if has_global_random or not has_units:
            return between_particles(u)
        if num_particles < 2:
            return nan
        return jnp.sqrt(jnp.sum(jnp.var(u, axis=0, ddof=1)) / num_particles) / u.shape[1]

    term_units: dict[str, jnp.ndarray] = {}
    for site in structure:
        u = units_of(site)
        name = term_of[site]
        term_units[name] = term_units[name] + u if name in term_units else u
    terms = {name: jnp.mean(u) for name, u in term_units.items()}
    total_units = sum(term_units.values())
    weighted_units = sum(weights.get(name, 1.0) * u for name, u in term_units.items())
    stderr = {name: stderr_of(u) for name, u in term_units.items()}
    stderr["total"] = stderr_of(total_units)
    mc_stderr = {name: mc_stderr_of(u) for name, u in term_units.items()}
    mc_stderr["total"] = mc_stderr_of(total_units)

    loss = jnp.mean(weighted_units)
    # Score-function terms for non-reparameterised sites of P: zero value, REINFORCE gradient.
    cost = jax.lax.stop_gradient(weighted_units)  # [K, U]
    for site in structure:
        score = parts[site][2]
        if score is None:
            continue
        # loss = mean_k mean_u cost[k, u]; a per-example site moves its own example's cost,
        # a global site moves the whole draw's.
        c = cost if score.ndim == 2 else jnp.mean(cost, axis=1)
        if num_particles > 1:
            baseline = (jnp.sum(c, axis=0, keepdims=True) - c) / (num_particles - 1)
        else:
            baseline = jnp.zeros_like(c)
        surrogate = (c - baseline) * score
        surrogate = surrogate - jax.lax.stop_gradient(surrogate)
        loss = loss + jnp.mean(surrogate)

    return KLObjective(loss, jnp.mean(total_units), terms, stderr, mc_stderr, dropped)
