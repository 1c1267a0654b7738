"""forgeline.define: model families (transformer, BERT, GPT), MoE routers, presets, checkpoints.

Names are imported lazily, so ``forgeline.define.routing_stats`` (numpy only) can be used by the
runtime without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "ForgelineModel": ".config", "InputSpec": ".config", "ModelConfig": ".config",
    "ModelInfo": ".registry", "build_model": ".registry", "get_config": ".registry", "list_models": ".registry",
    "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint",
    "LayerRoutingStats": ".routing_stats", "RoutingStats": ".routing_stats", "routing_stats": ".routing_stats",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
