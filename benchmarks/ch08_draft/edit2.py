import pickle
ex3_q = """3. **Derivation and code.** In the tied model, take $\\gamma = 1$ and a labelled image. Show that its
   label's distortion and rate together are
   $C + R = \\log 10 + \\big\\langle \\log p(z\\mid x)/q(z\\mid y)\\big\\rangle_{p(z\\mid x)}$: a labelled
   image pays its rate against *its own class's* Gaussian, an unlabelled one against the mixture.
   What does this say about what a label does to a code in this model? Check the identity draw by
   draw on the untrained tied model."""
ex3_a = """```{admonition} Solution
:class: dropdown
Bayes' rule in the dream world, $q(y\\mid z) = q(y)\\,q(z\\mid y)/q(z)$ with $q(y) = 1/10$, gives, for
every draw of the code, $-\\log q(y\\mid z) + \\log\\frac{p(z\\mid x)}{q(z)} = \\log 10 - \\log q(z\\mid y)
+ \\log q(z) + \\log\\frac{p(z\\mid x)}{q(z)} = \\log 10 + \\log\\frac{p(z\\mid x)}{q(z\\mid y)}$; averaging
over $p(z\\mid x)$ gives the identity. So a label turns the mixture prior into its class's
component: the labelled image's code is charged for every nat it sits away from its own class's
Gaussian, while an unlabelled image is charged only for its distance from the nearest ones. The
labels pin each Gaussian to a digit, and the unlabelled images, pulling codes towards whichever
Gaussians are near, do the rest. With $\\gamma > 1$ the term $-\\log q(y\\mid z)$ is weighted more
heavily, which presses the labelled codes harder into their own class's region. The cell below
compares the two sides on the same draws of the code; they agree to float32 rounding.
```"""
ex3_code = """tied_x, tied_y = x_l[:32], y_l[:32]
enc = tied0.encode(tied_x)
z_ex = enc.sample(jax.random.fold_in(key, 22), (4,))                                               # [S, N, K]
lhs = -tied0.classify(z_ex.reshape(-1, LATENT)).log_prob(jnp.tile(tied_y, 4)).reshape(4, -1) \\
    + enc.log_prob(z_ex) - jax.vmap(lambda zz: tied0.prior(zz.shape[0]).log_prob(zz))(z_ex)       # C + R, draw by draw
own = jax.vmap(lambda zz: tied0.components(zz.shape[0]).log_prob(zz[:, None, :])[jnp.arange(zz.shape[0]), tied_y])(z_ex)
rhs = math.log(NUM_CLASSES) + enc.log_prob(z_ex) - own                                          # log 10 + log p(z|x)/q(z|y)
assert float(jnp.max(jnp.abs(lhs - rhs))) <= 256 * EPS * float(jnp.max(jnp.abs(rhs)))"""
pickle.dump(dict(ex3_q=ex3_q, ex3_a=ex3_a, ex3_code=ex3_code), open("/tmp/ch08work/parts2.pkl", "wb"))
