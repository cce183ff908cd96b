"""Models with named unit sets: the tiny transformer (`TinyTransformer`), the group composition
models (`GroupMLP`, `GroupTransformer`) and their `HookPoint`s."""

from ._group_models import GroupMLP, GroupTransformer
from ._tiny_transformer import HookPoint, TinyTransformer
from ._adapter_base import ModelAdapter
from ._adapters import adapt, load_model
from ._fold import apply_norm, fold_layernorm, is_post_layernorm
from ._group_adapter import GroupAdapter
from ._hf_adapter import HFAdapter
from ._lens_adapter import LensAdapter, load_lens
from ._tiny_adapter import TinyAdapter

__all__ = ["TinyTransformer", "GroupMLP", "GroupTransformer", "HookPoint"]
__all__ += ["load_model", "adapt", "fold_layernorm", "is_post_layernorm", "apply_norm", "ModelAdapter", "HFAdapter", "TinyAdapter",
            "GroupAdapter", "LensAdapter", "load_lens"]  # adapters: any model as named unit sets
