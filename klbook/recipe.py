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

* **Per example.** If the models have a plate named ``data_plate`` (default ``"data"``) every
  term is reported in nats *per example*: sites inside the plate are averaged over it, global
  sites are divided by the plate's full size. Without such a plate, terms are totals.
* **Gradients.** Reparameterisable sites carry pathwise gradients. Sites of P that are not
  reparameterisable (discrete latents, for example) get a score-function (REINFORCE) term,
  :math:`\nabla \langle f\rangle_p = \langle (f - b)\nabla\log p\rangle_p`, added to ``loss`` with
  zero value, with a leave-one-out baseline :math:`b` over particles (use ``num_particles >= 2``
  for a useful baseline; with one particle :math:`b = 0`).
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
* **Masks** (``handlers.mask``, ``obs_mask``) are refused with an error: a masked site would
  silently drop terms from the ledger.

Call it inside ``jax.jit`` (the model functions are Python closures, traced once).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
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
    """Data sites whose unknown ``<log p(x)>`` was dropped as a constant."""


def sample_sites(model: Callable, key, *args, **kwargs) -> dict[str, dict]:
    """Run ``model`` once with ``key`` and return its sample sites (name -> NumPyro site dict)."""
    trace = handlers.trace(handlers.seed(model, key)).get_trace(*args, **kwargs)
    return {name: site for name, site in trace.items() if site["type"] == "sample"}


def _plate_frame(site: dict, plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame
    return None


def _per_unit(log_density: jnp.ndarray, site: dict, plate: str) -> jnp.ndarray | None:
    """Reduce a site's log-density to one value per example of ``plate`` (or None if global)."""
    frame = _plate_frame(site, plate)
    if frame is None:
        return None
    batch_ndim = len(site["fn"].batch_shape)
    axis = batch_ndim + frame.dim
    lp = jnp.moveaxis(jnp.reshape(log_density, site["fn"].batch_shape), axis, 0)
    return jnp.sum(lp.reshape(lp.shape[0], -1), axis=1)


def _log_base(measure, value):
    if isinstance(measure, dist.Distribution):
        return measure.log_prob(value)
    return measure(value)


def _check_worlds(real_sites: dict, dream_sites: dict) -> None:
    only_real = sorted(set(real_sites) - set(dream_sites))
    only_dream = sorted(set(dream_sites) - set(real_sites))
    if only_real or only_dream:
        parts = []
        if only_real:
            parts.append(f"sites {only_real} are in the real world but not the dream world")
        if only_dream:
            parts.append(f"sites {only_dream} are in the dream world but not the real world")
        raise ValueError(
            "the two worlds must be over the same random variables: " + "; ".join(parts)
        )
    for name, site in dream_sites.items():
        if site["is_observed"] and not real_sites[name]["is_observed"]:
            raise ValueError(
                f"site {name!r} is observed in the dream world but drawn in the real world: the dream "
                "world must score the real world's value, so sample it there without obs="
            )
    for world, sites in (("real", real_sites), ("dream", dream_sites)):
        masked = sorted(n for n, site in sites.items()
                        if site.get("mask") is not None or isinstance(site["fn"], dist.MaskedDistribution))
        if masked:
            raise ValueError(
                f"sites {masked} of the {world} world are masked (handlers.mask or obs_mask): the "
                "ledger would silently drop their masked entries; select the data you mean instead"
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


def _one_particle(key, real, dream, args, kwargs, plate, base_measure):
    """One draw from P scored under both worlds.

    Returns ``{site: (per_unit [U] or None, global scalar or None, score log p or None)}`` and,
    as static information, which real-world sites are observed and the data plate's size.
    """
    key_real, key_dream = jax.random.split(key)
    real_sites = sample_sites(real, key_real, *args, **kwargs)
    values = {n: s["value"] for n, s in real_sites.items()}
    dream_sites = sample_sites(handlers.substitute(dream, data=values), key_dream, *args, **kwargs)
    _check_worlds(real_sites, dream_sites)
    out = {}
    for name, p_site in real_sites.items():
        q_site = dream_sites[name]
        value = p_site["value"]
        log_q = q_site["fn"].log_prob(value)
        score = None
        if p_site["is_observed"]:
            # The data's own density is unknown: 0 (dropped) or a base measure m(x).
            log_p = _log_base(base_measure[name], value) if name in base_measure else 0.0
            site = q_site
        else:
            log_p = p_site["fn"].log_prob(value)
            score = None if p_site["fn"].has_rsample else log_p
            site = p_site
        shape = jnp.broadcast_shapes(jnp.shape(log_p), jnp.shape(log_q), tuple(site["fn"].batch_shape))
        if shape != tuple(site["fn"].batch_shape):
            site = q_site if site is p_site else p_site
        ratio = jnp.broadcast_to(log_p - log_q, shape)
        unit = _per_unit(ratio, site, plate)
        if score is not None:
            per = _per_unit(jnp.broadcast_to(score, shape), site, plate)
            score = jnp.sum(score) if per is None else per
        out[name] = (unit, None if unit is not None else jnp.sum(ratio), score)
    observed = {n: s["is_observed"] for n, s in real_sites.items()}
    sizes = [
        f.size for s in list(real_sites.values()) + list(dream_sites.values())
        for f in s["cond_indep_stack"] if f.name == plate
    ]
    return out, (observed, max(sizes) if sizes else None)


def kl_objective(
    key,
    real: Callable,
    dream: Callable,
    *args: Any,
    names: Mapping[str, str] | None = None,
    weights: Mapping[str, float] | None = None,
    num_particles: int = 1,
    data_plate: str = "data",
    base_measure: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> KLObjective:
    r"""Monte Carlo estimate of :math:`I[P;Q]` split into named terms (the ledger).

    .. math:: \widehat{I} = \frac1K\sum_{k=1}^K \sum_s \log\frac{p(s_k\mid\cdot)}{q(s_k\mid\cdot)},
              \qquad (x, z)_k \sim P.

    Args:
        key: JAX PRNG key (split per particle and per world).
        real: NumPyro model of the world as it is; data enters through ``obs=`` sites.
        dream: NumPyro model of the world as we wish it were, over the same sample sites.
        *args, **kwargs: passed to both models.
        names: site -> term name, e.g. ``{"z": "rate", "x": "distortion"}``; sites sharing a
            name are summed into one term; unnamed sites keep their site name.
        weights: term name -> weight in ``loss`` (default 1 for every term).
        num_particles: independent draws from P, ``K >= 1``.
        data_plate: name of the plate that indexes examples.
        base_measure: data site -> a NumPyro distribution or a callable ``x -> log m(x)``.

    Returns:
        :class:`KLObjective` ``(loss, total, terms, stderr, mc_stderr, dropped)``.

    Raises:
        ValueError: if the worlds' sample sites differ (naming them), a name, weight or base
            measure refers to something that does not exist, or ``num_particles < 1``.
        TypeError: if ``key`` is not a PRNG key or a world is not callable.
    """
    check_key(key)
    for fn, what in ((real, "real"), (dream, "dream")):
        if not callable(fn):
            raise TypeError(f"the {what} world must be a NumPyro model function; got {type(fn).__name__}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer; got {num_particles!r}")
    names, weights, base_measure = dict(names or {}), dict(weights or {}), dict(base_measure or {})

    keys = jax.random.split(key, num_particles)
    # Trace the first particle outside any vmap to learn the structure (sites, plates) and check
    # the arguments. With one particle this is the whole computation: a vmap over an axis of size
    # 1 would make XLA fuse the step differently and cost ~20% (benchmarks/README.md).
    structure, (observed, plate_size) = _one_particle(keys[0], real, dream, args, kwargs, data_plate, base_measure)
    unknown = sorted(set(names) - set(structure))
    if unknown:
        raise ValueError(f"names refers to sites {unknown} that the worlds do not have; sites: {sorted(structure)}")
    not_data = sorted(s for s in base_measure if s not in observed or not observed[s])
    if not_data:
        raise ValueError(f"base_measure is for data (observed) sites of the real world; {not_data} are not")
    term_of = {site: names.get(site, site) for site in structure}
    unknown_w = sorted(set(weights) - set(term_of.values()))
    if unknown_w:
        raise ValueError(f"weights refers to terms {unknown_w}; the terms are {sorted(set(term_of.values()))}")
    dropped = tuple(s for s in structure if observed[s] and s not in base_measure)

    if num_particles == 1:
        parts = jax.tree.map(lambda a: a[None], structure)
    else:
        parts = jax.vmap(lambda k: _one_particle(k, real, dream, args, kwargs, data_plate, base_measure)[0])(keys)

    n = plate_size or 1
    has_units = plate_size is not None and any(parts[s][0] is not None for s in parts)
    has_global_random = any(
        parts[s][0] is None and not observed[s] for s in parts
    )

    def units_of(site):  # [K, U] per-unit contribution of a site (global sites shared out)
        unit, glob, _ = parts[site]
        if unit is not None:
            return unit
        width = next(parts[s][0].shape[1] for s in parts if parts[s][0] is not None) if has_units else 1
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
