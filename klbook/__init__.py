"""klbook: KL is all you need, as code.

Almost every objective in modern machine learning is the KL divergence I[P;Q] from the world as
it is (P) to the world as we wish it were (Q). This package makes each chapter's objective a few
lines: ``kl`` and ``mc_kl`` for divergences, and one module per chapter.
"""

from klbook.divergence import MCEstimate, cross_entropy, entropy, kl, mc_kl, register_kl
from klbook.units import NATS_PER_BIT, bits_per_dim, to_bits, to_nats

__version__ = "0.1.0"

__all__ = [
    "kl",
    "mc_kl",
    "entropy",
    "cross_entropy",
    "register_kl",
    "MCEstimate",
    "to_bits",
    "to_nats",
    "bits_per_dim",
    "NATS_PER_BIT",
    "__version__",
]
