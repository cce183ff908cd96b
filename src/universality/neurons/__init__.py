"""What the neurons and attention heads of language models do (Gurnee et al. 2024): statistics,
families, functional roles and interventions, streamed or read from weights.

| name                                           | what it gives                                          |
|------------------------------------------------|--------------------------------------------------------|
| `neuron_table`, `family_summary`               | per neuron: universality, moments, family, weights, role |
| `NeuronStatsAccumulator`                       | streamed mean, variance, skew, kurtosis, frequency     |
| `weight_statistics`                            | norms, cos(w_in, w_out), vocabulary composition moments |
| `FamilyAccumulator` + feature sets (below)     | variance reduction per binary token feature: families  |
| `universal_vs_rest`, `plot_universal_vs_rest`  | each statistic as a within-layer percentile            |
| `prediction_neurons`, `entropy_neuron_scores`  | roles from weights: vocab kurtosis / skew, W_U null space |
| `entropy_intervention`, `attention_deactivation_scores`, `bos_attention_patching` | roles by intervention |
| `intervene` + `set_units`, `zero_units`, `scale_units`, `mean_ablate` | loss, entropy, KL of any edit   |
| `head_scores`, `match_heads`                   | attention heads: previous-token, induction, BOS sink; across seeds |

Feature sets for `FamilyAccumulator`: `unigram`, `previous_token`, `position_buckets`, `token_strings`,
`alphabet`, `label_features`; `row_context` gives their per-token inputs for a batch of token rows.

`STAT_COLUMNS` names the neuron table's statistics. Building blocks (`ActivationMoments`, `FeatureSet`,
`UnitEdit`, `pattern_scores`, `row_moments`, ...) stay in their modules: `universality.neurons._neuron_stats`,
`._families`, `._interventions`, `._heads`, `._weights`.
"""

from ._families import (
    FamilyAccumulator, alphabet, label_features, position_buckets, previous_token, row_context, token_strings,
    unigram,
)
from ._heads import head_scores, match_heads
from ._interventions import intervene, mean_ablate, scale_units, set_units, zero_units
from ._neuron_stats import NeuronStatsAccumulator, plot_universal_vs_rest, universal_vs_rest
from ._neuron_table import STAT_COLUMNS, family_summary, neuron_table
from ._roles import (
    attention_deactivation_scores, bos_attention_patching, entropy_intervention, entropy_neuron_scores,
    prediction_neurons,
)
from ._weights import weight_statistics

__all__ = ["neuron_table", "family_summary", "STAT_COLUMNS", "NeuronStatsAccumulator", "weight_statistics",
           "FamilyAccumulator", "unigram", "previous_token", "position_buckets", "token_strings", "alphabet",
           "label_features", "row_context", "universal_vs_rest", "plot_universal_vs_rest", "prediction_neurons",
           "entropy_neuron_scores", "entropy_intervention", "attention_deactivation_scores", "bos_attention_patching",
           "intervene", "set_units", "zero_units", "scale_units", "mean_ablate", "head_scores", "match_heads"]
