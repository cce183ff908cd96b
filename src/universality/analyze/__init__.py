"""Group-composition metrics (Chughtai, Chan, Nanda 2023 and neighbours) on plain tensors or arrays.

Pairs are always all (a, b), a-major: pair index = a * |G| + b. Everything runs in float64.

| function                      | question                                                      |
|-------------------------------|---------------------------------------------------------------|
| `logit_similarity`            | which irreps' characters chi(a b c^-1) do the logits follow?  |
| `fraction_logits_explained`   | how much of the logits do all characters explain?             |
| `fraction_variance_explained` | which irrep blocks hold an embedding or unembedding?          |
| `hidden_fve`                  | how much of the hidden layer is rho(a), rho(b), rho(ab)?      |
| `neuron_irreps`               | which irrep does each unit use; which units are dead?         |
| `restricted_loss`, `excluded_loss`, `model_loss` | is the key irreps' rho(ab) part necessary and sufficient? |
| `irrep_emergence`             | when, and in which order, does each irrep become key?         |
| `fourier_key_frequencies`     | cyclic groups: which Fourier frequencies (Nanda et al. 2023)? |
| `coset_constancy`, `subgroups_of_interest` | coset circuits (Stander et al. 2023)             |
"""

from ._cosets import check_subgroup, coset_constancy, subgroups_of_interest
from ._emergence import irrep_emergence
from ._fourier import FREQUENCY_THRESHOLD, fourier_key_frequencies
from ._irreps import KEY_THRESHOLD, fraction_logits_explained, fraction_variance_explained, hidden_fve, logit_similarity
from ._loss import excluded_loss, model_loss, restricted_loss
from ._neurons import NEURON_THRESHOLD, neuron_irreps

__all__ = ["logit_similarity", "fraction_logits_explained", "fraction_variance_explained", "hidden_fve",
           "neuron_irreps", "restricted_loss", "excluded_loss", "model_loss", "irrep_emergence",
           "fourier_key_frequencies", "coset_constancy", "subgroups_of_interest", "check_subgroup",
           "KEY_THRESHOLD", "NEURON_THRESHOLD", "FREQUENCY_THRESHOLD"]
