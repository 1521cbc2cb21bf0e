"""klbook.semisup: the chapter-8 identities (a missing label drops its term; M2's sum over labels) and clear errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klbook import semisup as ss
from klbook.recipe import KLObjective
from klbook.recipe import kl_objective as _kl_objective


def kl_objective(key, real, dream, *args, **options):  # compiled: eager NumPyro tracing is slow
    return eqx.filter_jit(lambda k, a: _kl_objective(k, real, dream, *a, **options))(key, args)


N, D, K, C, T = 12, 6, 2, 3, 4  # images, pixels, code, classes, counts per pixel


@pytest.fixture(scope="module")
def batch():
    kx, ky = jax.random.split(jax.random.key(0))
    return jax.random.randint(kx, (N, D), 0, T + 1), jax.random.randint(ky, (N,), 0, C)


@pytest.mark.parametrize("make", [ss.code_model, ss.tied_code_model], ids=["separate head", "tied head"])
def test_a_missing_label_drops_exactly_its_term(batch, make):
    x, y = batch
    model = make(jax.random.key(1), D, K, C, width=8, total_count=T)
    lab = kl_objective(jax.random.key(2), ss.post_real_world, ss.post_dream_world, model, x, y, names=ss.POST_NAMES)
    unl = kl_objective(
        jax.random.key(2), ss.post_real_world, ss.post_dream_world, model, x, names={"x": "distortion", "z": "rate"}
    )
    assert set(unl.terms) == {"distortion", "rate"} and unl.dropped == ("x",) and lab.dropped == ("x", "y")
    for name in ("distortion", "rate"):  # same key, same codes: the same terms
        np.testing.assert_allclose(unl.terms[name], lab.terms[name], rtol=1e-6)
    np.testing.assert_allclose(lab.total - unl.total, lab.terms["classification"], rtol=1e-5)


def test_post_objective_weights_and_fractions(batch):
    x, y = batch
    model = ss.code_model(jax.random.key(1), D, K, C, width=8, total_count=T)
    k_l, k_u = jax.random.split(jax.random.key(3))
    out = eqx.filter_jit(lambda m, k: ss.post_objective(k, m, x[:4], y[:4], x[4:], 20, beta=0.5, gamma=7.0))(
        model, jax.random.key(3)
    )
    assert isinstance(out, KLObjective) and out.dropped == ("x", "y")
    loss, terms = out.loss, out.terms
    lab = kl_objective(k_l, ss.post_real_world, ss.post_dream_world, model, x[:4], y[:4], names=ss.POST_NAMES).terms
    unl = kl_objective(
        k_u, ss.post_real_world, ss.post_dream_world, model, x[4:], names={"x": "distortion", "z": "rate"}
    ).terms
    f_l, f_u = 4 / 24, 20 / 24
    want = f_l * (0.5 * lab["distortion"] + 7.0 * lab["classification"] + lab["rate"]) + f_u * (
        0.5 * unl["distortion"] + unl["rate"]
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    # terms per example of the whole set; their unweighted sum is the total (the loss at beta = gamma = 1)
    np.testing.assert_allclose(terms["classification"], f_l * lab["classification"], rtol=1e-6)
    for name in ("distortion", "rate"):
        np.testing.assert_allclose(terms[name], f_l * lab[name] + f_u * unl[name], rtol=1e-5)
    np.testing.assert_allclose(out.total, sum(terms.values()), rtol=1e-5)
    assert set(out.stderr) == set(out.mc_stderr) == {"distortion", "classification", "rate", "total"}


def test_m2_unlabelled_term_is_the_classifier_weighted_labelled_terms_minus_its_entropy(batch):
    # U(x) = sum_y p(y|x) L(x, y) - H[p(y|x)], for one image, within Monte Carlo error
    x, _ = batch
    model = ss.m2(jax.random.key(4), D, K, C, width=8, total_count=T)
    one = x[:1]
    u = kl_objective(
        jax.random.key(5),
        ss.m2_real_world,
        ss.m2_dream_world,
        model,
        one,
        names=ss.M2_NAMES,
        enumerate_sites=("y",),
        num_particles=400,
    )
    p = np.asarray(model.classify(one).probs[0])

    @eqx.filter_jit
    def labelled(m, k):  # L(x, v) for every label v, one compiled call
        def at(v):
            lv = _kl_objective(
                jax.random.fold_in(k, v),
                ss.m2_real_world,
                ss.m2_dream_world,
                m,
                one,
                v[None],
                names=ss.M2_NAMES,
                num_particles=400,
            )
            return lv.total, lv.mc_stderr["total"]

        return jax.vmap(at)(jnp.arange(C))

    totals, ses = (np.asarray(a) for a in labelled(model, jax.random.key(6)))
    parts, var = totals, float(np.sum((p * ses) ** 2))
    want = float(np.dot(p, parts) + np.sum(p * np.log(p)))
    assert abs(float(u.total) - want) < 4 * np.sqrt(var + float(u.mc_stderr["total"]) ** 2)
    # the label's own term is the exact KL(p(y|x) || uniform): no sampling noise at all
    np.testing.assert_allclose(u.terms["label"], np.sum(p * np.log(p * C)), rtol=1e-5, atol=1e-6)


def test_split_labelled_is_balanced_and_disjoint():
    y = np.repeat(np.arange(C), 7)
    split = ss.split_labelled(jax.random.key(7), y, 2, num_splits=3)
    assert split.labelled.shape == (3, 2 * C) and split.unlabelled.shape == (3, 7 * C - 2 * C)
    for lab, unl in zip(split.labelled, split.unlabelled, strict=True):
        assert np.all(np.bincount(y[lab], minlength=C) == 2)
        assert np.array_equal(np.sort(np.concatenate([lab, unl])), np.arange(y.size))
    assert not np.array_equal(split.labelled[0], split.labelled[1])
    with pytest.raises(ValueError, match="fewer than per_class"):
        ss.split_labelled(jax.random.key(7), y, 8)


def test_fit_models_trains_every_model_and_errors_are_fractions(batch):
    x, y = batch
    y = jnp.arange(N) % C
    split = ss.split_labelled(jax.random.key(8), y, 1, num_splits=2)
    models, history = ss.fit_models(
        jax.random.key(9),
        lambda k: ss.classifier(k, D, C, width=8, total_count=T),
        lambda m, k, xl, yl, xu, n, w: ss.supervised_objective(k, m, xl, yl, weight=w),
        x,
        y,
        split,
        [1.0, 10.0],
        num_steps=20,
        batch_size=4,
        progress=False,
    )
    assert np.all(np.isfinite(history["loss"])) and history["loss"].shape == (20,)
    err = ss.error_rate(models, x, y)
    assert err.shape == (2,) and np.all((0 <= err) & (err <= 1))
    for i in range(2):  # the compiled, vmapped error against each model's own predictions, counted in NumPy
        wrong = np.argmax(np.asarray(ss.model_at(models, i).predict(x)), axis=-1) != np.asarray(y)
        assert err[i] == pytest.approx(wrong.mean(), abs=1e-7)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):  # checked before compiling
        ss.error_rate(models, x, y + C)
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(12,\)"):
        ss.error_rate(models, x, y[:3])
    with pytest.raises(TypeError, match="integer pixel counts"):
        ss.error_rate(models, x.astype(jnp.float32), y)
    with pytest.raises(TypeError, match="stacked by fit_models; got list"):
        ss.error_rate([models], x, y)
    with pytest.raises(TypeError, match="the post's models .* got Classifier"):
        ss.image_terms(jax.random.key(0), models, x)
    # model_at is klbook.train.member: an index out of range or an unstacked model is refused by name
    single = ss.model_at(models, -1)
    with pytest.raises(IndexError, match="model index 2 is out of range for 2 stacked models"):
        ss.model_at(models, 2)
    with pytest.raises(ValueError, match="stacked on a leading axis"):
        ss.model_at(single, 0)
    with pytest.raises(ValueError, match="models must be models stacked on a leading axis"):
        ss.error_rate(single, x, y)
    with pytest.raises(ValueError, match="models must be models stacked on a leading axis"):
        ss.mistakes(single, x, y)


def test_bad_inputs_are_named(batch):
    x, y = batch
    model = ss.code_model(jax.random.key(1), D, K, C, width=8, total_count=T)
    with pytest.raises(TypeError, match="integer pixel counts"):
        model.encode(x.astype(jnp.float32))
    with pytest.raises(ValueError, match="0..4"):
        model.encode(x + T)
    with pytest.raises(ValueError, match="labels must lie"):
        ss.post_real_world(model, x, y + C)
    with pytest.raises(ValueError, match="shape"):
        ss.post_real_world(model, x, y[:3])
    with pytest.raises(ValueError, match="n_unlabelled"):
        ss.post_objective(jax.random.key(0), model, x, y, x, 0)


def test_tied_head_is_the_bayes_posterior_of_its_prior():
    # q(y|z) = q(y) q(z|y) / q(z), with q(z) = sum_y q(y) q(z|y): checked against a float64 NumPy brute force
    model = ss.tied_code_model(jax.random.key(10), D, K, C, width=8, total_count=T)
    model = eqx.tree_at(lambda m: m.log_scales, model, 0.3 * jax.random.normal(jax.random.key(11), (C, K)))
    z = jax.random.normal(jax.random.key(12), (7, K)) * 2
    mu, sd, zz = (np.asarray(a, np.float64) for a in (model.locs, np.exp(model.log_scales), z))
    log_comp = (-0.5 * ((zz[:, None, :] - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)).sum(-1)  # [7, C]
    log_joint = log_comp - np.log(C)
    log_marginal = np.logaddexp.reduce(log_joint, axis=-1)
    np.testing.assert_allclose(model.prior(7).log_prob(z), log_marginal, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.classify(z).probs, np.exp(log_joint - log_marginal[:, None]), rtol=1e-5, atol=1e-7)
    # the two factorisations of one joint: log q(z) + log q(y|z) = log q(y) + log q(z|y) for every label
    both = model.prior(7).log_prob(z)[:, None] + np.log(np.asarray(model.classify(z).probs, np.float64))
    np.testing.assert_allclose(both, log_joint, rtol=1e-5, atol=1e-5)


def test_an_unlabelled_image_trains_the_tied_head_but_not_the_untied_one(batch):
    x, _ = batch
    names = {"x": "distortion", "z": "rate"}

    def head_gradient(model, part):
        g = eqx.filter_grad(
            lambda m: _kl_objective(jax.random.key(13), ss.post_real_world, ss.post_dream_world, m, x, names=names).loss
        )(model)
        return sum(float(jnp.sum(jnp.abs(leaf))) for leaf in jax.tree.leaves(eqx.filter(part(g), eqx.is_array)))

    untied = ss.code_model(jax.random.key(1), D, K, C, width=8, total_count=T)
    tied = ss.tied_code_model(jax.random.key(1), D, K, C, width=8, total_count=T)
    assert head_gradient(untied, lambda m: m.head) == 0.0
    assert head_gradient(tied, lambda m: (m.locs, m.log_scales)) > 0.0


def test_post_objective_trains_the_tied_model(batch):
    # the worlds are the post's (test_a_missing_label_drops_exactly_its_term covers both heads)
    x, _ = batch
    split = ss.split_labelled(jax.random.key(8), jnp.arange(N) % C, 1, num_splits=2)
    models, history = ss.fit_models(
        jax.random.key(15),
        lambda k: ss.tied_code_model(k, D, K, C, width=8, total_count=T),
        lambda m, k, xl, yl, xu, n, w: ss.post_objective(k, m, xl, yl, xu, n, beta=0.1, gamma=w),
        x,
        jnp.arange(N) % C,
        split,
        [1.0, 10.0],
        num_steps=20,
        batch_size=4,
        progress=False,
    )
    assert np.all(np.isfinite(history["loss"]))
    probs = eqx.filter_vmap(lambda m: m.predict(x))(models)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)


def test_tied_model_bad_inputs_are_named(batch):
    x, y = batch
    model = ss.tied_code_model(jax.random.key(1), D, K, C, width=8, total_count=T)
    with pytest.raises(ValueError, match="0..4"):
        model.encode(x + T)
    with pytest.raises(ValueError, match="labels must lie"):
        ss.post_real_world(model, x, y + C)
    with pytest.raises(ValueError, match=r"z must have shape \[N, 2\]"):
        model.classify(jnp.zeros((3, K + 1)))
    with pytest.raises(ValueError, match=r"z must have shape \[N, 2\]"):  # the same under jit (shapes are static)
        eqx.filter_jit(lambda m, z: m.classify(z).probs)(model, jnp.zeros((3, K + 1)))
    with pytest.raises(ValueError, match="spread must be positive"):
        ss.tied_code_model(jax.random.key(1), D, K, C, spread=0.0)


def test_image_terms_are_each_models_own_unlabelled_ledger(batch):
    x, y = batch
    y = jnp.arange(N) % C
    split = ss.split_labelled(jax.random.key(10), y, 1, num_splits=2)
    models, _ = ss.fit_models(
        jax.random.key(11),
        lambda k: ss.code_model(k, D, K, C, width=8, total_count=T),
        lambda m, k, xl, yl, xu, n, w: ss.post_objective(k, m, xl, yl, xu, n, gamma=w),
        x,
        y,
        split,
        [1.0, 10.0],
        num_steps=5,
        batch_size=4,
        progress=False,
    )
    terms = ss.image_terms(jax.random.key(12), models, x, num_particles=3)
    assert set(terms) == {"distortion", "rate"} and terms["rate"].shape == (2,)
    for i in range(2):  # the vmapped, compiled ledger is each model's own, with the same key and draws
        own = kl_objective(
            jax.random.key(12),
            ss.post_real_world,
            ss.post_dream_world,
            ss.model_at(models, i),
            x,
            names={"x": "distortion", "z": "rate"},
            num_particles=3,
        )
        for name in ("distortion", "rate"):
            np.testing.assert_allclose(terms[name][i], own.terms[name], rtol=1e-5)
    with pytest.raises(ValueError, match=r"shape \[N, 6\]"):
        ss.image_terms(jax.random.key(12), models, x[:, :3])
    with pytest.raises(ValueError, match="models must be models stacked on a leading axis"):
        ss.image_terms(jax.random.key(12), ss.model_at(models, 0), x)


def test_m2_refuses_labels_out_of_range_eagerly_and_under_jit(batch):
    # before: one_hot of an out-of-range label is a zero vector, a silent wrong answer
    x, y = batch
    model = ss.m2(jax.random.key(4), D, K, C, width=8, total_count=T)
    z = jnp.zeros((N, K))
    for bad in (y + C, y - C):
        with pytest.raises(ValueError, match="labels must lie in 0..2"):
            model.encode(x, bad)
        with pytest.raises(ValueError, match="labels must lie in 0..2"):
            model.decode(z, bad)
    with pytest.raises(Exception, match="labels must lie in 0..2"):  # traced: stopped at run time, same message
        eqx.filter_jit(lambda m, yy: m.encode(x, yy).mean)(model, y + C)
    with pytest.raises(Exception, match="labels must lie in 0..2"):
        eqx.filter_jit(lambda m, yy: m.decode(z, yy).mean)(model, y + C)
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(12,\)"):
        model.decode(z, y.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"z must have shape \[N, 2\]"):
        model.decode(jnp.zeros((N, K + 1)), y)
    # in range, jitted and eager agree
    np.testing.assert_allclose(
        eqx.filter_jit(lambda m, yy: m.encode(x, yy).mean)(model, y), model.encode(x, y).mean, rtol=1e-6, atol=1e-6
    )


def test_m2_objective_weights_and_fractions(batch):
    # L_M2 = f_l (L(x, y) + alpha CE) + f_u U(x), with L and U the recipe's ledgers and CE the classifier's
    x, y = batch
    model = ss.m2(jax.random.key(4), D, K, C, width=8, total_count=T)
    k_l, k_u = jax.random.split(jax.random.key(3))
    out = eqx.filter_jit(lambda m, k: ss.m2_objective(k, m, x[:4], y[:4], x[4:], 20, alpha=7.0))(
        model, jax.random.key(3)
    )
    assert isinstance(out, KLObjective) and out.dropped == ("x", "y")
    loss, terms = out.loss, out.terms
    lab = kl_objective(k_l, ss.m2_real_world, ss.m2_dream_world, model, x[:4], y[:4], names=ss.M2_NAMES)
    unl = kl_objective(
        k_u, ss.m2_real_world, ss.m2_dream_world, model, x[4:], names=ss.M2_NAMES, enumerate_sites=("y",)
    )
    log_p = np.log(np.asarray(model.classify(x[:4]).probs, np.float64))
    ce = -np.mean(log_p[np.arange(4), np.asarray(y[:4])])
    f_l, f_u = 4 / 24, 20 / 24
    np.testing.assert_allclose(loss, f_l * (float(lab.loss) + 7.0 * ce) + f_u * float(unl.loss), rtol=1e-5)
    np.testing.assert_allclose(terms["classification"], f_l * ce, rtol=1e-5)  # per example of the whole set
    np.testing.assert_allclose(out.total, sum(terms.values()), rtol=1e-5)  # the loss at alpha = 1
    np.testing.assert_allclose(out.mc_stderr["classification"], 0.0)  # no draws in the cross-entropy
    for name in ("distortion", "rate", "label"):
        np.testing.assert_allclose(terms[name], f_l * lab.terms[name] + f_u * unl.terms[name], rtol=1e-5)
    # the labelled ledger holds log 1/q(y) = log C, the unlabelled one an exact KL to the uniform q(y)
    np.testing.assert_allclose(lab.terms["label"], np.log(C), rtol=1e-6)
    alpha0 = ss.m2_objective(jax.random.key(3), model, x[:4], y[:4], x[4:], 20, alpha=0.0).loss
    np.testing.assert_allclose(float(loss) - float(alpha0), f_l * 7.0 * ce, rtol=1e-4)


def test_mixture_code_model_has_the_tied_prior_but_a_separate_head(batch):
    x, y = batch
    mix = ss.mixture_code_model(jax.random.key(1), D, K, C, width=8, total_count=T)
    z = jax.random.normal(jax.random.key(2), (5, K))
    tied = eqx.tree_at(
        lambda m: (m.locs, m.log_scales),
        ss.tied_code_model(jax.random.key(1), D, K, C, width=8, total_count=T),
        (mix.locs, mix.log_scales),
    )
    np.testing.assert_allclose(mix.prior(5).log_prob(z), tied.prior(5).log_prob(z), rtol=1e-6)
    np.testing.assert_allclose(mix.classify(z).logits, jax.vmap(mix.head)(z), rtol=1e-6)
    g = eqx.filter_grad(
        lambda m: (
            _kl_objective(
                jax.random.key(13),
                ss.post_real_world,
                ss.post_dream_world,
                m,
                x,
                names={"x": "distortion", "z": "rate"},
            ).loss
        )
    )(mix)
    assert sum(float(jnp.sum(jnp.abs(v))) for v in jax.tree.leaves(eqx.filter(g.head, eqx.is_array))) == 0.0
    assert float(jnp.sum(jnp.abs(g.locs))) > 0.0
    with pytest.raises(ValueError, match="spread must be positive"):
        ss.mixture_code_model(jax.random.key(1), D, K, C, spread=-1.0)


def test_per_model_adam_is_adam_per_model_and_fit_models_takes_weight_rows(batch):
    import optax

    x, _ = batch
    y = jnp.arange(N) % C
    split = ss.split_labelled(jax.random.key(8), y, 1, num_splits=2)
    make = lambda k: ss.classifier(k, D, C, width=8, total_count=T)
    obj = lambda m, k, xl, yl, xu, n, w: ss.supervised_objective(k, m, xl, yl, weight=w[0] * w[1])
    run = lambda opt, w: ss.fit_models(
        jax.random.key(9), make, obj, x, y, split, w, num_steps=10, batch_size=4, optimizer=opt, progress=False
    )[0]
    w = [[1.0, 1.0], [2.0, 0.5]]
    a = run(optax.adam(1e-2), w)
    b = run(ss.per_model_adam([1e-2, 1e-2]), w)
    for la, lb in zip(
        jax.tree.leaves(eqx.filter(a, eqx.is_array)), jax.tree.leaves(eqx.filter(b, eqx.is_array)), strict=True
    ):
        np.testing.assert_allclose(la, lb, rtol=1e-6, atol=1e-7)
    c = run(ss.per_model_adam([1e-2, 1e-1]), w)  # model 0 as before, model 1 with its own step
    d = run(optax.adam(1e-1), w)
    for la, lc, ld in zip(*(jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (a, c, d)), strict=True):
        np.testing.assert_allclose(lc[0], la[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(lc[1], ld[1], rtol=1e-6, atol=1e-7)
    e = run(ss.per_model_adam(1e-2, weight_decay=[0.0, 0.1]), w)
    f = run(optax.adamw(1e-2, weight_decay=0.1), w)
    for la, le, lf in zip(*(jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (a, e, f)), strict=True):
        np.testing.assert_allclose(le[0], la[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(le[1], lf[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="learning_rates must be positive"):
        ss.per_model_adam([1e-2, 0.0])
    with pytest.raises(ValueError, match="one entry \\(or one row\\) per row of split"):
        run(optax.adam(1e-2), [1.0, 2.0, 3.0])


def test_mistakes_and_holdout(batch):
    x, _ = batch
    y = jnp.arange(N) % C
    split = ss.split_labelled(jax.random.key(8), y, 1, num_splits=2)
    models, _ = ss.fit_models(
        jax.random.key(9),
        lambda k: ss.classifier(k, D, C, width=8, total_count=T),
        lambda m, k, xl, yl, xu, n, w: ss.supervised_objective(k, m, xl, yl, weight=w),
        x,
        y,
        split,
        [1.0, 1.0],
        num_steps=5,
        batch_size=4,
        progress=False,
    )
    wrong = ss.mistakes(models, x, y)
    assert wrong.shape == (2, N) and wrong.dtype == bool
    np.testing.assert_allclose(ss.error_rate(models, x, y), wrong.mean(-1))
    train, val = ss.holdout(jax.random.key(3), 20, 5)
    assert val.size == 5 and train.size == 15 and np.array_equal(np.sort(np.concatenate([train, val])), np.arange(20))
    with pytest.raises(ValueError, match="size must lie in 1..num-1"):
        ss.holdout(jax.random.key(3), 20, 20)


# --- cross-checks against NumPyro's own estimator (Trace_ELBO), value and gradient -------------------------------
# Both sides are Monte Carlo estimates of the same expectation, so each is averaged over KEYS independent draws and
# the means must agree within 5 standard errors of their difference (elementwise for the gradient; quantities with
# no sampling noise on either side must agree to float32 rounding).
KEYS = 4000


def _flat(tree):
    return jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(eqx.filter(tree, eqx.is_array))])


def _agree(ours, theirs, what):
    """``ours``, ``theirs``: [KEYS, P] per-draw values; their means must agree within 5 s.e. (plus float rounding)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    diff = ours.mean(0) - theirs.mean(0)
    se = np.sqrt(ours.var(0, ddof=1) / ours.shape[0] + theirs.var(0, ddof=1) / theirs.shape[0])
    scale = max(np.abs(ours.mean(0)).max(), 1.0)
    bad = np.abs(diff) > 5 * se + 1e-5 * scale
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} disagree; worst {np.abs(diff)[bad].max():.3g} vs s.e. {se[bad].max():.3g}"
    )
    return np.abs(ours.mean(0)).max()


def _per_key(loss):
    """Per-key values and flattened gradients of ``loss(model, key)`` over KEYS keys."""

    def one(m, k):
        v, g = eqx.filter_value_and_grad(loss)(m, k)
        return v, _flat(g)

    return eqx.filter_jit(lambda m, ks: jax.vmap(lambda k: one(m, k))(ks))


@pytest.mark.parametrize("make", [ss.code_model, ss.tied_code_model], ids=["separate head", "tied head"])
def test_post_objective_is_numpyros_trace_elbo_per_example(batch, make):
    # the post's loss with every unlabelled image in the batch, times N, is -ELBO of the dream world (model) with the
    # encoder as guide, its image's and label's log-likelihoods scaled by beta and gamma (numpyro.handlers.scale)
    import numpyro
    from numpyro import handlers
    from numpyro.infer import Trace_ELBO

    x, y = batch
    x_l, y_l, x_u = x[:4], y[:4], x[4:]
    beta, gamma = 0.5, 3.0
    model0 = make(jax.random.key(1), D, K, C, width=8, total_count=T)

    def dream(m):
        with numpyro.plate("lab", 4):
            z = numpyro.sample("z_l", m.prior(4))
            with handlers.scale(scale=beta):
                numpyro.sample("x_l", m.decode(z), obs=x_l)
            with handlers.scale(scale=gamma):
                numpyro.sample("y_l", m.classify(z), obs=y_l)
        with numpyro.plate("unl", N - 4):
            z = numpyro.sample("z_u", m.prior(N - 4))
            with handlers.scale(scale=beta):
                numpyro.sample("x_u", m.decode(z), obs=x_u)

    def encoder(m):
        with numpyro.plate("lab", 4):
            numpyro.sample("z_l", m.encode(x_l))
        with numpyro.plate("unl", N - 4):
            numpyro.sample("z_u", m.encode(x_u))

    keys = jax.random.split(jax.random.key(20), KEYS)
    ours = _per_key(lambda m, k: ss.post_objective(k, m, x_l, y_l, x_u, N - 4, beta=beta, gamma=gamma).loss)(
        model0, keys
    )
    theirs = _per_key(lambda m, k: Trace_ELBO().loss(k, {}, dream, encoder, m) / N)(model0, keys)
    assert _agree(ours[0][:, None], theirs[0][:, None], "value") > 1.0
    assert _agree(ours[1], theirs[1], "gradient") > 0.0


def test_m2_objective_is_numpyros_trace_elbo_with_the_label_summed_by_hand(batch):
    # TraceEnum_ELBO needs funsor, which klbook does not depend on; the unlabelled ledger's sum over labels is written
    # out: U(x) = sum_v p(v|x) [log p(v|x) + L(x, v)], with L(x, v) = -ELBO of the image with label v (Trace_ELBO),
    # each image's ELBO weighted by p(v|x) through numpyro.handlers.scale
    import numpyro
    from numpyro import handlers
    from numpyro.infer import Trace_ELBO

    x, y = batch
    x_l, y_l, x_u = x[:4], y[:4], x[4:]
    alpha, n_u = 7.0, N - 4
    model0 = ss.m2(jax.random.key(4), D, K, C, width=8, total_count=T)

    def dream(m, xx, yy, w=None):
        n = xx.shape[0]
        with numpyro.plate("data", n), handlers.scale(scale=1.0 if w is None else w):
            numpyro.sample("y", m.label_prior(n), obs=yy)
            z = numpyro.sample("z", m.prior(n))
            numpyro.sample("x", m.decode(z, yy), obs=xx)

    def encoder(m, xx, yy, w=None):
        with numpyro.plate("data", xx.shape[0]), handlers.scale(scale=1.0 if w is None else w):
            numpyro.sample("z", m.encode(xx, yy))

    def numpyro_m2(m, k):
        ks = jax.random.split(k, C + 1)
        lab = Trace_ELBO().loss(ks[0], {}, dream, encoder, m, x_l, y_l)  # sum of L(x, y)
        log_p = jax.nn.log_softmax(m.classify(x_u).logits, -1)  # [N_u, C]
        p = jnp.exp(log_p)
        unl = jnp.sum(p * log_p)
        for v in range(C):
            yv = jnp.full(n_u, v)
            unl = unl + Trace_ELBO().loss(ks[v + 1], {}, dream, encoder, m, x_u, yv, p[:, v])
        ce = -jnp.sum(m.classify(x_l).log_prob(y_l))
        return (lab + alpha * ce + unl) / N

    keys = jax.random.split(jax.random.key(21), KEYS)
    ours = _per_key(lambda m, k: ss.m2_objective(k, m, x_l, y_l, x_u, n_u, alpha=alpha).loss)(model0, keys)
    theirs = _per_key(numpyro_m2)(model0, keys)
    assert _agree(ours[0][:, None], theirs[0][:, None], "value") > 1.0
    assert _agree(ours[1], theirs[1], "gradient") > 0.0


def test_supervised_objective_is_a_klobjective_and_objectives_are_key_first(batch):
    x, y = batch
    model = ss.classifier(jax.random.key(1), D, C, width=8, total_count=T)
    out = ss.supervised_objective(jax.random.key(0), model, x, y, weight=3.0)
    ce = -np.mean(np.asarray(model.classify(x).log_prob(y)))
    assert isinstance(out, KLObjective) and out.dropped == ("y",)
    np.testing.assert_allclose(out.terms["classification"], ce, rtol=1e-6)
    np.testing.assert_allclose(out.loss, 3.0 * ce, rtol=1e-6)
    for objective in (ss.post_objective, ss.m2_objective, ss.supervised_objective):
        with pytest.raises(TypeError):  # the model where the key belongs: check_key names it
            objective(model, jax.random.key(0), x, y, x, N)
    with pytest.raises(TypeError, match="must return a KLObjective"):
        split = ss.split_labelled(jax.random.key(8), jnp.arange(N) % C, 1, num_splits=1)
        ss.fit_models(
            jax.random.key(9),
            lambda k: ss.classifier(k, D, C, width=8, total_count=T),
            lambda m, k, xl, yl, xu, n, w: ss.supervised_objective(k, m, xl, yl).loss,
            x,
            jnp.arange(N) % C,
            split,
            [1.0],
            num_steps=2,
            batch_size=4,
            progress=False,
        )


def test_component_scales_have_a_floor_that_is_exact_above_it_and_passes_gradient_below():
    """Review 7.2: a class component q(z|y) cannot collapse to a point (its density would grow without bound)."""
    import numpyro.distributions as dist

    model = ss.tied_code_model(jax.random.key(10), D, K, C, width=8, total_count=T)
    at = lambda s: eqx.tree_at(lambda t: t.log_scales, model, s)  # noqa: E731
    collapsed = at(jnp.full((C, K), -30.0))  # exp(-30) = 9e-14 without the floor
    assert np.all(np.asarray(collapsed.components(2).base_dist.scale) == np.float32(ss.MIN_SCALE))
    centre = collapsed.locs[None]  # [1, C, K]: each component's own centre, where its density peaks
    peak = -K * (np.log(ss.MIN_SCALE) + 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(collapsed.components(1).log_prob(centre), np.full((1, C), peak), rtol=1e-5)

    # above the floor: exp(log_scales) bit for bit, value and gradient (chapter 8's models are unchanged)
    z = model.locs[None] + 1.0

    def floored(s):
        return jnp.sum(at(s).components(1).log_prob(z))

    def plain(s):
        return jnp.sum(dist.Normal(model.locs, jnp.exp(s)).to_event(1).log_prob(z[0]))

    s = model.log_scales
    np.testing.assert_array_equal(floored(s), plain(s))
    np.testing.assert_array_equal(jax.grad(floored)(s), jax.grad(plain)(s))
    # below it the value stays at the floor and the gradient still flows: a component there can grow back
    g = np.asarray(jax.grad(floored)(jnp.full((C, K), -30.0)))
    assert np.all(np.isfinite(g)) and np.all(g != 0.0)
    # the public transform (chapter 8's control heads call it): the floor in value, exp's gradient everywhere
    v = jnp.array([-30.0, 0.0, 1.5])
    np.testing.assert_array_equal(ss.floored_scale(v), [np.float32(ss.MIN_SCALE), 1.0, jnp.exp(1.5)])
    np.testing.assert_array_equal(jax.grad(lambda u: jnp.sum(ss.floored_scale(u)))(v), jnp.exp(v))


@pytest.mark.parametrize("which", ["code_model", "mixture_code_model", "tied_code_model", "m2"])
def test_every_code_entry_checks_z_the_same_way_eagerly_and_under_jit(batch, which):
    """Review 7.2: classify and decode take codes z [N, K] and name a wrong shape, in every model."""
    x, y = batch
    model = getattr(ss, which)(jax.random.key(1), D, K, C, width=8, total_count=T)
    entries = {"decode": lambda m, z: m.decode(z, y[: z.shape[0]] if z.ndim else y[:1]).mean}
    if which != "m2":  # M2's classify reads images, not codes
        entries = {"classify": lambda m, z: m.classify(z).logits, "decode": lambda m, z: m.decode(z).mean}
    for bad in (jnp.zeros((3, K + 1)), jnp.zeros((K,)), jnp.zeros((2, 3, K))):
        for entry in entries.values():
            for run in (entry, eqx.filter_jit(entry)):
                with pytest.raises(ValueError, match=rf"z must have shape \[N, {K}\] \(one code per example\)"):
                    run(model, bad)
    for name, entry in entries.items():  # the right shape passes
        assert entry(model, jnp.zeros((3, K))).shape[0] == 3, name


def test_split_labelled_refuses_a_missing_class_and_takes_num_classes():
    """Review 7.2: a class absent from y was silently left out of the labelled set."""
    y = np.repeat(np.array([0, 2]), 5)  # class 1 absent
    with pytest.raises(ValueError, match="class 1 has 0 images, fewer than per_class=1"):
        ss.split_labelled(jax.random.key(7), y, 1)
    full = np.repeat(np.arange(C), 5)
    with pytest.raises(ValueError, match=f"class {C} has 0 images"):  # a missing last class: only num_classes knows
        ss.split_labelled(jax.random.key(7), full, 1, num_classes=C + 1)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1; got 0..2"):
        ss.split_labelled(jax.random.key(7), full, 1, num_classes=2)
    with pytest.raises(ValueError, match="labels must lie in"):
        ss.split_labelled(jax.random.key(7), full - 1, 1)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="num_classes must be a positive integer"):
            ss.split_labelled(jax.random.key(7), full, 1, num_classes=bad)
    # the default (max(y) + 1 classes) and the explicit count give the same split as before
    a = ss.split_labelled(jax.random.key(7), full, 2, num_splits=2)
    b = ss.split_labelled(jax.random.key(7), full, 2, num_splits=2, num_classes=C)
    np.testing.assert_array_equal(a.labelled, b.labelled)
    assert a.labelled.shape == (2, 2 * C)
