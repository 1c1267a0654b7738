"""The artifact's extra graphs (prefill, decode, encode): their specs and an executor for each."""

from __future__ import annotations

from ..errors import ArtifactError
from ..format import GraphSpec, Manifest


def graph_spec(manifest: Manifest, name: str) -> GraphSpec:
    if name not in manifest.graphs:
        raise ArtifactError(
            f"the artifact of {manifest.name} has no {name!r} graph (it has: {', '.join(manifest.graphs) or 'none'}); "
            "re-export it with this forgeline (generation graphs are exported for gpt and transformer models)."
        )
    return manifest.graphs[name]


def open_graph(model, name: str):
    """An executor for graph ``name`` on the model's backend (and TVM build)."""
    from ..paths import confined

    spec = graph_spec(model.manifest, name)
    if model.build is None:
        from ..backends.ort import OrtExecutor

        return OrtExecutor(confined(model.path, spec.onnx, f"graph {name!r}"))
    lib = model.build.graph_libs.get(name)
    if lib is None:
        raise ArtifactError(
            f"TVM build {model.build.tag} has no library for the {name!r} graph; recompile the artifact "
            "with `forgeline compile DIR`, or use backend='ort'."
        )
    from ..backends.tvm import TvmExecutor

    from ..params_file import binding_for

    return TvmExecutor(confined(model.path, lib, f"the {name!r} library"), device=model.build.device,
                       device_id=model.device_id, sha256=model.manifest.files.get(lib),
                       params=binding_for(model.path, model.build, lib))
