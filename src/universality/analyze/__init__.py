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
| `analyze_group_seed`          | all of the above for one trained model, as tables            |

Neurons of language models (Gurnee et al. 2024), streamed:

| `ActivationMoments`, `NeuronStatsAccumulator` | exact mean, variance, skew, kurtosis, frequency |
| `weight_statistics`            | norms, cos(w_in, w_out), vocabulary composition moments     |
| `universal_vs_rest`, `plot_universal_vs_rest` | each statistic as a within-layer percentile |
| `FamilyAccumulator` + feature sets | variance reduction per binary token feature: families   |
| `neuron_table`, `family_summary` | all of the above per neuron, joined with universality      |
| `prediction_neurons`, `entropy_neuron_scores` | roles from weights: vocab kurtosis/skew, W_U null space |
| `entropy_intervention`, `attention_deactivation_scores`, `bos_attention_patching` | roles by intervention |
| `intervene` + `set_units`, `zero_units`, `scale_units`, `mean_ablate` | loss, entropy, KL of any edit |
| `head_scores`, `match_heads` | attention heads: previous-token, induction, BOS sink, positional; across seeds |
"""

from ._cosets import check_subgroup, coset_constancy, subgroups_of_interest
from ._emergence import irrep_emergence
from ._families import (
    FamilyAccumulator, FeatureSet, alphabet, label_features, position_buckets, previous_token, row_context,
    token_strings, unigram,
)
from ._group_seed import analyze_group_seed, element_matrices, run_on_pairs
from ._fourier import FREQUENCY_THRESHOLD, fourier_key_frequencies
from ._irreps import KEY_THRESHOLD, fraction_logits_explained, fraction_variance_explained, hidden_fve, logit_similarity
from ._loss import excluded_hidden, excluded_loss, model_loss, restricted_hidden, restricted_loss
from ._neuron_stats import (
    ActivationMoments, NeuronStatsAccumulator, plot_universal_vs_rest, universal_vs_rest, weight_statistics,
)
from ._heads import head_correlations, head_scores, induction_tokens, match_heads, pattern_scores
from ._interventions import UnitEdit, intervene, mean_ablate, next_token_metrics, scale_units, set_units, zero_units
from ._roles import (
    attention_deactivation_scores, bos_attention_patching, entropy_intervention, entropy_neuron_scores,
    prediction_neurons,
)
from ._neuron_table import STAT_COLUMNS, family_summary, neuron_table
from ._neurons import NEURON_THRESHOLD, neuron_irreps

__all__ = ["logit_similarity", "fraction_logits_explained", "fraction_variance_explained", "hidden_fve",
           "neuron_irreps", "restricted_loss", "excluded_loss", "model_loss", "restricted_hidden", "excluded_hidden",
           "irrep_emergence",
           "fourier_key_frequencies", "coset_constancy", "subgroups_of_interest", "check_subgroup",
           "KEY_THRESHOLD", "NEURON_THRESHOLD", "FREQUENCY_THRESHOLD", "analyze_group_seed", "element_matrices",
           "run_on_pairs", "ActivationMoments", "NeuronStatsAccumulator", "weight_statistics", "universal_vs_rest",
           "plot_universal_vs_rest", "FamilyAccumulator", "FeatureSet", "unigram", "previous_token",
           "position_buckets", "token_strings", "alphabet", "label_features", "row_context", "neuron_table",
           "family_summary", "STAT_COLUMNS", "UnitEdit", "intervene", "mean_ablate", "next_token_metrics",
           "scale_units", "set_units", "zero_units", "attention_deactivation_scores", "bos_attention_patching",
           "entropy_intervention", "entropy_neuron_scores", "prediction_neurons", "head_correlations", "head_scores",
           "induction_tokens", "match_heads", "pattern_scores"]
