"""Tests for klbook.worlds: the graph read off each world's code, and the side-by-side drawing."""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from matplotlib.colors import to_rgb
from matplotlib.patches import Circle, FancyArrowPatch
from numpyro.infer.inspect import get_dependencies

from klbook.plot import DREAM, REAL
from klbook.worlds import WorldGraph, draw, structure

matplotlib.use("Agg")

N, D, K = 6, 4, 2
X = jax.random.normal(jax.random.key(0), (N, D))
Y = jnp.arange(N) % 3
ENC = eqx.nn.MLP(D, 2 * K, 8, 1, key=jax.random.key(1))
DEC = eqx.nn.MLP(K, D, 8, 1, key=jax.random.key(2))


def vae_real(x, enc, dec):
    """P: x is data, z ~ encoder(x); the encoder reads the model argument."""
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)
        h = jax.vmap(enc)(x)
        numpyro.sample("z", dist.Normal(h[:, :K], jnp.exp(h[:, K:])).to_event(1))


def vae_real_returned(x, enc, dec):
    """P again, but the encoder reads the value numpyro.sample returns."""
    with numpyro.plate("data", x.shape[0]):
        xs = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)
        h = jax.vmap(enc)(xs)
        numpyro.sample("z", dist.Normal(h[:, :K], jnp.exp(h[:, K:])).to_event(1))


def vae_dream(x, enc, dec):
    """Q: z ~ N(0, 1), x ~ decoder(z)."""
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        numpyro.sample("x", dist.Normal(jax.vmap(dec)(z), 1.0).to_event(1))


def sup_real(x, y):
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)
        numpyro.sample("y", dist.Categorical(logits=jnp.zeros(3)), obs=y)


def sup_dream(x, y):
    w = numpyro.param("w", jnp.zeros((D, 3)))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)
        numpyro.sample("y", dist.Categorical(logits=x @ w))


def density_real(x):
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)


def density_dream(x):
    loc = numpyro.param("loc", jnp.zeros(D))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(loc, 1.0).to_event(1))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    matplotlib.pyplot.close("all")


@pytest.mark.parametrize("real", [vae_real, vae_real_returned])
def test_vae_pair_arrows_point_opposite_ways(real):
    p = structure(real, X, ENC, DEC)
    q = structure(vae_dream, X, ENC, DEC)
    assert isinstance(p, WorldGraph)
    assert p.nodes == ("x", "z") and q.nodes == ("z", "x")
    assert p.edges == (("x", "z"),)  # the encoder reads x
    assert q.edges == (("z", "x"),)  # the decoder reads z; the networks are no nodes
    assert p.observed == {"x"} and q.observed == frozenset()
    assert [(pl.name, pl.size, set(pl.sites)) for pl in p.plates] == [("data", N, {"x", "z"})]
    assert [(pl.name, pl.size, set(pl.sites)) for pl in q.plates] == [("data", N, {"x", "z"})]


def test_supervised_pair():
    p = structure(sup_real, X, Y)
    q = structure(sup_dream, X, Y)
    assert p.edges == () and p.observed == {"x", "y"}
    # y depends on x through the data argument; the parameter w draws no arrow.
    assert q.edges == (("x", "y"),) and q.observed == {"x"}


def test_density_pair():
    p = structure(density_real, X)
    q = structure(density_dream, X)
    assert p.nodes == q.nodes == ("x",)
    assert p.edges == q.edges == ()
    assert p.observed == {"x"} and q.observed == frozenset()


def hierarchy(x):
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    numpyro.factor("penalty", -(a**2))  # a factor is not a random variable
    with numpyro.plate("groups", 2):
        b = numpyro.sample("b", dist.Normal(a, s))
        with numpyro.plate("items", 3, dim=-2):
            numpyro.sample("c", dist.Normal(a + b, 1.0))
    numpyro.sample("d", dist.Normal(0.0, 1.0))


def test_latent_edges_agree_with_numpyro_get_dependencies():
    g = structure(hierarchy, X)
    with jax.numpy_rank_promotion("allow"):  # numpyro's own initial draw broadcasts ranks
        prior = get_dependencies(hierarchy, (X,))["prior_dependencies"]
    expected = {(u, d) for d, ups in prior.items() for u in ups if u != d and "penalty" not in (u, d)}
    assert set(g.edges) == expected
    assert g.nodes == ("a", "s", "b", "c", "d")
    assert [(pl.name, pl.sites) for pl in g.plates] == [("groups", ("b", "c")), ("items", ("c",))]


def test_model_using_concrete_argument_values_still_gets_its_arrows():
    def concrete(x):
        n = int(np.asarray(x).shape[0])  # numpy on the argument: cannot be traced
        scale = float(np.abs(np.asarray(x)).max())
        with numpyro.plate("data", n):
            xs = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)
            numpyro.sample("z", dist.Normal(jnp.sum(xs, -1), scale))

    g = structure(concrete, X)
    assert g.edges == (("x", "z"),) and g.observed == {"x"}


def _drawn_nodes(ax):
    """Centre and fill of each drawn node, keyed by the label written on it."""
    circles = [p for p in ax.patches if isinstance(p, Circle)]
    labels = {t.get_position(): t.get_text() for t in ax.texts}
    return {labels[tuple(c.center)]: (tuple(c.center), c.get_facecolor(), c.get_edgecolor()) for c in circles}


def test_draw_puts_each_variable_in_the_same_place_in_both_panels():
    fig, axes = draw(vae_real, vae_dream, X, ENC, DEC)
    assert len(axes) == 2 and axes[0].figure is fig
    p, q = _drawn_nodes(axes[0]), _drawn_nodes(axes[1])
    assert set(p) == set(q) == {"x", "z"}
    assert all(p[n][0] == q[n][0] for n in p)
    # Dream world's generative order: z above x.
    assert q["z"][0][1] > q["x"][0][1]
    # Shaded where observed in that world; coloured by world.
    white = (1.0, 1.0, 1.0)
    assert p["x"][1][:3] != white and p["z"][1][:3] == white
    assert q["x"][1][:3] == white and q["z"][1][:3] == white
    assert np.allclose(p["x"][2][:3], to_rgb(REAL)) and np.allclose(q["x"][2][:3], to_rgb(DREAM))
    # One arrow per edge; P's goes up (x -> z), Q's goes down (z -> x).
    (arrow_p,) = [a for a in axes[0].patches if isinstance(a, FancyArrowPatch)]
    (arrow_q,) = [a for a in axes[1].patches if isinstance(a, FancyArrowPatch)]
    assert arrow_p._posA_posB[1][1] > arrow_p._posA_posB[0][1]
    assert arrow_q._posA_posB[1][1] < arrow_q._posA_posB[0][1]
    assert [t.get_text() for t in axes[0].texts if "data" in t.get_text()] == [f"data ({N})"]


def test_draw_into_given_axes_with_titles():
    fig, given = matplotlib.pyplot.subplots(1, 2)
    out_fig, axes = draw(sup_real, sup_dream, X, Y, ax=given, titles=("P", "Q"))
    assert out_fig is fig and list(axes) == list(given)
    assert [a.get_title() for a in axes] == ["P", "Q"]
    with pytest.raises(ValueError, match="two matplotlib axes"):
        draw(sup_real, sup_dream, X, Y, ax=given[:1])


def test_worlds_over_different_variables_are_rejected_naming_the_sites():
    def other(x, enc, dec):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)
            numpyro.sample("u", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"real world P: \['u'\].*dream world Q: \['z'\]"):
        draw(other, vae_dream, X, ENC, DEC)


def test_not_callable_is_rejected():
    with pytest.raises(TypeError, match="dream world must be a NumPyro model"):
        draw(vae_real, "vae_dream", X, ENC, DEC)
    with pytest.raises(TypeError, match="model must be a NumPyro model"):
        structure(None)


def test_no_random_variables_is_rejected():
    with pytest.raises(ValueError, match="no random variables"):
        draw(lambda: None, lambda: None)
