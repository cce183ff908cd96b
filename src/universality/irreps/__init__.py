"""Which irreducible representations networks trained on finite-group composition learn (Chughtai et al. 2023).

Inputs are plain tensors or arrays over all pairs (a, b), a-major: pair index = a * |G| + b.
Everything runs in float64.

| function                      | question                                                      |
|-------------------------------|---------------------------------------------------------------|
| `analyze_group_seed`          | all of the below for one trained model, as tables             |
| `logit_similarity`            | which irreps' characters chi(a b c^-1) do the logits follow?  |
| `fraction_logits_explained`   | how much of the logits do all characters explain?             |
| `fraction_variance_explained` | which irrep blocks hold an embedding or unembedding?          |
| `hidden_fve`                  | how much of the hidden layer is rho(a), rho(b), rho(ab)?      |
| `unit_irreps`                 | which irrep does each hidden unit use; which units are dead?  |
| `restricted_loss`, `excluded_loss` | is the key irreps' rho(ab) part necessary and sufficient? |
| `irrep_emergence`             | when, and in which order, does each irrep become key?         |
| `irrep_similarity`            | which irreps' rho(ab) blocks do two seeds' hidden layers share? |
| `fourier_key_frequencies`     | cyclic groups: which Fourier frequencies (Nanda et al. 2023)? |
| `coset_constancy`, `subgroups_of_interest` | coset circuits (Stander et al. 2023)             |

Helpers and defaults (`model_loss`, `restricted_hidden`, `run_on_pairs`, `KEY_THRESHOLD`, ...) stay in
their modules: `universality.irreps._loss`, `._group_seed`, `._irreps`, `._units`, `._fourier`.
"""

from ._cosets import coset_constancy, subgroups_of_interest
from ._emergence import irrep_emergence
from ._fourier import fourier_key_frequencies
from ._group_seed import analyze_group_seed
from ._irreps import fraction_logits_explained, fraction_variance_explained, hidden_fve, logit_similarity
from ._loss import excluded_loss, restricted_loss
from ._subspaces import irrep_similarity
from ._units import unit_irreps

__all__ = ["analyze_group_seed", "logit_similarity", "fraction_logits_explained", "fraction_variance_explained",
           "hidden_fve", "unit_irreps", "restricted_loss", "excluded_loss", "irrep_emergence",
           "irrep_similarity", "fourier_key_frequencies", "coset_constancy", "subgroups_of_interest"]
