r"""Bring your own NumPyro model and guide: the recipe's two worlds, built from the pair.

A NumPyro user writes a ``model`` (priors, likelihood, ``obs=`` data) and a ``guide`` (a
hand-written one or an autoguide) and gets one number from ``Trace_ELBO``. In this book's terms
the pair already *is* two worlds:

* the real world P is the data together with the guide: the examples as they are, and the
  latents drawn from the guide, :math:`p(x)\,p(z\mid x)`;
* the dream world Q is the model: :math:`q(z)\,q(x\mid z)`.

So :func:`worlds` turns the pair into the ``real`` and ``dream`` functions of
:func:`klbook.recipe.kl_objective`, which returns the ledger: one named term per site, with
standard errors, per example of the full data set. With a data plate (default name ``"data"``,
``numpyro.plate("data", N, subsample_size=B)`` allowed, in the model and the guide alike) the
ledger's ``total`` is an unbiased estimate of :math:`-\mathrm{ELBO}/N` up to the data's unknown
entropy, the same quantity ``Trace_ELBO().loss / N`` estimates (``tests/test_model_guide.py``
checks value and gradient on a conjugate model and on a subsampled hierarchical one).

Parameters. NumPyro guides and models declare their parameters with ``numpyro.param``, often
constrained (a positive scale). :func:`worlds` traces the pair once and returns the initial
parameters *unconstrained* (``ModelGuideWorlds.params``), the form an optimiser wants; both
worlds take that dict as their first argument and map each value through
``numpyro.distributions.biject_to(constraint)`` before substituting it, as NumPyro's SVI does.
:meth:`ModelGuideWorlds.constrained` gives the values the model sees. Train with
:func:`klbook.train.fit` (example in the book's practitioner page, *Using klbook in your own work*).

Chapter 3 (the recipe) explains the ledger; chapter 10 is this construction for Bayesian
inference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints

from klbook.divergence import check_key

__all__ = ["ModelGuideWorlds", "worlds"]


class ModelGuideWorlds(NamedTuple):
    """The recipe's worlds for a NumPyro ``model`` and ``guide`` (see :func:`worlds`)."""

    real: Callable[..., None]
    """P: ``real(params, *args, **kwargs)``: the guide's latents and the model's observed data."""
    dream: Callable[..., None]
    """Q: ``dream(params, *args, **kwargs)``: the model."""
    params: dict[str, jax.Array]
    """Every ``numpyro.param`` of the guide and the model at its initial value, unconstrained."""
    constraints: dict[str, constraints.Constraint]
    """Each parameter's constraint (``constraints.real`` when none was declared)."""

    def constrained(self, params: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The parameters as the model and guide see them: each through its constraint's bijection."""
        unknown = sorted(set(params) - set(self.constraints))
        if unknown:
            raise KeyError(
                f"parameters {unknown} are not parameters of the model or the guide; "
                f"they are {sorted(self.constraints)}"
            )
        return {name: dist.biject_to(self.constraints[name])(value) for name, value in params.items()}


def _param_sites(
    fn: Callable, key, args, kwargs, substitute: dict | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trace of ``fn`` and its ``param`` sites."""
    tr = handlers.trace(
        handlers.seed(fn if substitute is None else handlers.substitute(fn, data=substitute), key)
    ).get_trace(*args, **kwargs)
    return tr, {name: site for name, site in tr.items() if site["type"] == "param"}


def worlds(key, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> ModelGuideWorlds:
    r"""The real world (data + guide) and the dream world (model) of a NumPyro pair, for the recipe.

    Args:
        key: JAX PRNG key, used once to initialise the parameters (an autoguide's too).
        model: a NumPyro model; its ``obs=`` sites are the data.
        guide: a NumPyro guide for ``model`` (an autoguide such as
            ``numpyro.infer.autoguide.AutoNormal(model)``, or a function).
        *args, **kwargs: arguments of the model and guide for the initialising trace (the data).

    Returns:
        :class:`ModelGuideWorlds` ``(real, dream, params, constraints)``. Then
        ``kl_objective(key, w.real, w.dream, params, *args)`` is the ledger, with
        ``model_kwargs=`` for keyword arguments.

    Raises:
        TypeError: if ``key`` is not a PRNG key or ``model``/``guide`` is not callable.
        ValueError: if the model has no observed site (nothing for the real world to hold), or
            the guide observes a site (a guide draws latents; the data belong to the model).

    The recipe then checks the rest, eagerly and under ``jax.jit``: a latent of the model that
    the guide does not draw, or one the guide draws that the model lacks, is named; so is a site
    with different shapes or plates in the two.

    Example::

        w = klbook.model_guide.worlds(jax.random.key(0), model, guide, y)
        def loss(params, key, batch):
            out = klbook.recipe.kl_objective(key, w.real, w.dream, params, batch)
            return out.loss, out.terms
        result = klbook.train.fit(jax.random.key(1), loss, w.params, num_steps=1000, data=y)
    """
    check_key(key)
    for fn, what in ((model, "model"), (guide, "guide")):
        if not callable(fn):
            raise TypeError(f"the {what} must be a NumPyro model function (or an autoguide); got {type(fn).__name__}")
    k_guide, k_model = jax.random.split(key)
    guide_trace, guide_params = _param_sites(guide, k_guide, args, kwargs)
    observed = sorted(n for n, s in guide_trace.items() if s["type"] == "sample" and s["is_observed"])
    if observed:
        raise ValueError(
            f"the guide observes sites {observed}: a guide draws the latents, and the data "
            "belong to the model's obs= sites"
        )
    latents = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "sample"}
    model_trace, model_params = _param_sites(model, k_model, args, kwargs, substitute=latents)
    data_sites = sorted(n for n, s in model_trace.items() if s["type"] == "sample" and s["is_observed"])
    model_latents = {n for n, s in model_trace.items() if s["type"] == "sample" and not s["is_observed"]}
    for names, said in (
        (model_latents - set(latents), "latent sites of the model that the guide does not draw"),
        (set(latents) - model_latents, "sites the guide draws that the model does not have"),
    ):
        if names:
            raise ValueError(
                f"{sorted(names)} are {said}: the real world's latents are the guide's, so "
                "the guide must draw exactly the model's latent sites"
            )
    if not data_sites:
        raise ValueError(
            "the model has no observed (obs=) site: the real world holds the data, so the model must observe them"
        )
    sites = {**model_params, **guide_params}
    cons = {name: site["kwargs"].get("constraint", constraints.real) for name, site in sites.items()}
    init = {name: dist.biject_to(cons[name]).inv(site["value"]) for name, site in sites.items()}

    def constrained(params):
        return {name: dist.biject_to(cons[name])(value) for name, value in params.items()}

    def real(params, *a, **kw):
        values = constrained(params)
        with handlers.trace() as drawn:
            handlers.substitute(guide, data=values)(*a, **kw)
        # The data: the model's observed sites, in the model's plates, with the guide's draws (and
        # its minibatch indices) replayed into the model so that its shapes and plates match. The
        # model's latent sites are hidden: in P the latents are the guide's.
        hide = lambda msg: msg["type"] in ("sample", "param") and not msg.get("is_observed", False)  # noqa: E731
        with handlers.block(hide_fn=hide):
            handlers.replay(handlers.substitute(model, data=values), trace=drawn)(*a, **kw)

    def dream(params, *a, **kw):
        handlers.substitute(model, data=constrained(params))(*a, **kw)

    return ModelGuideWorlds(real, dream, init, cons)
