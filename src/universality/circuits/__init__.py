"""Circuits across seeds: which components carry a behaviour (attribution and activation patching), which
heads play which role in the indirect-object circuit (Wang et al. 2022), and whether every seed builds it.
Models: `TinyAdapter` seeds on the synthetic task (`tasks.IOITask`), and Hugging Face decoders (GPT-2,
GPT-NeoX / Pythia, Llama-style) on English prompts built with their tokenizer (`tasks.TextIOITask`).

| name                                         | what it gives                                             |
|----------------------------------------------|-----------------------------------------------------------|
| `attribution_patching`                       | per head and MLP: grad x (corrupt - clean), three passes  |
| `activation_patching`                        | per head and MLP: the metric's change when patched, one pass each |
| `rank_correlation`                           | Spearman of the two over heads                            |
| `head_role_scores`, `classify_heads`         | previous-token, duplicate-token, induction, S-inhibition, (negative) name-mover scores and roles |
| `heads_with_role`                            | the heads holding a role (an error when none does)        |
| `circuits_table`                             | `circuits.parquet` rows: roles per seed, matched across seeds |
| `ioi_reference_model`, `IOI_REFERENCE_HEADS` | a TinyTransformer built to hold the IOI circuit, and its heads, to check a method on |
| `permute_heads`                              | a copy of a TinyTransformer with its heads reordered (the same function) |

Building blocks stay in their modules: `universality.circuits._patching` (`run_components`, sites),
`._roles` (`repeated_sequence_scores`, `name_mover_scores`, `s_inhibition_scores`), `._across_seeds`.
"""

from ._across_seeds import CIRCUIT_COLUMNS, circuits_table, seed_roles
from ._patching import activation_patching, attribution_patching, rank_correlation
from ._reference import IOI_REFERENCE_HEADS, ioi_reference_model, permute_heads
from ._roles import ROLES, RoleThresholds, classify_heads, head_role_scores, heads_with_role

__all__ = ["attribution_patching", "activation_patching", "rank_correlation", "head_role_scores", "classify_heads",
           "heads_with_role", "RoleThresholds", "ROLES", "circuits_table", "seed_roles", "CIRCUIT_COLUMNS",
           "ioi_reference_model", "IOI_REFERENCE_HEADS", "permute_heads"]
