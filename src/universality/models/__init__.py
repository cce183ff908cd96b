"""Models with named unit sets: the tiny transformer (`TinyTransformer`) and its `HookPoint`s."""

from ._tiny_transformer import HookPoint, TinyTransformer

__all__ = ["TinyTransformer", "HookPoint"]
