"""Model files are data, not code: tensors plus a plain config dict, loaded with ``weights_only=True``.

Opening a model someone shared therefore cannot run their code. Every file carries a format version, the
package version, the config and the command line that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cryojoint._atomic import atomic_path
from cryojoint.config import SHIPPED_MODEL_NAMES, CryojointConfig
from cryojoint.errors import UserInputError

MODEL_FORMAT_VERSION = 1
MODEL_KIND = "cryojoint-model"
#: The file a training run writes its model to (``RUN/model.pt``).
MODEL_NAME = "model.pt"
#: Models shipped in the package, by the name users give instead of a path (``cryojoint predict general ...``),
#: each a versioned file in ``cryojoint/weights/`` made by ``cryojoint pretrain``. ``general`` is the current version;
#: earlier ones stay loadable by their own name, so that a run started from one can be repeated.
SHIPPED_MODELS: dict[str, str] = {"general": "general-v2.pt", "general-v1": "general-v1.pt"}
assert set(SHIPPED_MODELS) == set(SHIPPED_MODEL_NAMES)


def is_shipped_model(path: str | Path) -> bool:
    """``path`` names a shipped model (and no file of that name is here, which would take precedence)."""
    return str(path) in SHIPPED_MODELS and not Path(path).exists()


def resolve_model_path(path: str | Path) -> Path:
    """A shipped model's file for its name (unless a file of that name exists here), else ``path`` itself."""
    path = Path(path)
    if is_shipped_model(path):
        from importlib import resources

        shipped = Path(str(resources.files("cryojoint") / "weights" / SHIPPED_MODELS[str(path)]))
        if not shipped.is_file():
            raise UserInputError(path, f"shipped model '{path}' is missing from this installation ({shipped})")
        return shipped
    return path


def model_file_sha256(path: str | Path) -> str:
    """SHA-256 of a model's file (a shipped model's by its name): which weights made some outputs, wherever the file
    lies (a moved installation keeps it, a retrained model.pt at the same path changes it)."""
    import hashlib

    return hashlib.sha256(resolve_model_path(path).read_bytes()).hexdigest()


@dataclass
class LoadedModel:
    """A ready-to-run network with everything prediction needs to know about its training data."""

    network: torch.nn.Module
    config: CryojointConfig
    particle_diameter_px: float  # at network scale (after downsample)
    downsample: float  # input px per network px (imaging.bin_image)
    meta: dict[str, Any]

    @property
    def is_general(self) -> bool:
        """A pretrained general model (cryojoint.pretraining): it runs at any particle size it is told."""
        return bool(self.meta.get("general"))


def finest_learned_pixel_size(pretraining_meta: dict[str, Any]) -> float | None:
    """The finest pixel size (Å/px, at the network's scale) a general model saw micrographs at: its smallest
    structure at the corpus's largest particle in network px, or its finest real micrograph, whichever is finer.
    ``None`` when the model's metadata do not say (``meta["pretraining"]`` of :func:`pretrain`)."""
    from cryojoint.simulation import list_presets, load_structure

    corpus = pretraining_meta.get("corpus") or {}
    corpus_config = corpus.get("config") or {}
    candidates: list[float] = []
    structures = [name for name in corpus_config.get("structures", ()) if name in list_presets()]
    particle_px = corpus.get("network_particle_px_range")
    if structures and particle_px:
        smallest = min(float(load_structure(name)[2]["diameter_angstrom"]) for name in structures)
        candidates.append(smallest / float(max(particle_px)))
    if corpus.get("real_micrographs") and corpus_config.get("real_pixel_sizes_angstrom"):
        candidates.append(float(min(corpus_config["real_pixel_sizes_angstrom"])))
    return min(candidates) if candidates else None


def save_model(path: str | Path, network: torch.nn.Module, config: CryojointConfig, meta: dict[str, Any]) -> Path:
    """Write ``model.pt`` atomically: state dict on CPU + plain metadata."""
    from cryojoint import __version__

    payload = {
        "kind": MODEL_KIND,
        "format_version": MODEL_FORMAT_VERSION,
        "cryojoint_version": __version__,
        "config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "meta": meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The payload of a model file, or of a shipped model given by name (:data:`SHIPPED_MODELS`)."""
    path = resolve_model_path(path)
    if path.is_dir():
        hint = f": give {path / MODEL_NAME}" if (path / MODEL_NAME).is_file() else ""
        raise UserInputError(path, f"is a folder, not a model file{hint}")
    if not path.is_file():
        raise UserInputError(path, "model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or damaged files
        raise UserInputError(path, f"not a cryojoint model file ({err.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("kind") != MODEL_KIND:
        raise UserInputError(path, "not a cryojoint model file (a training checkpoint? use RUN/model.pt)")
    version = int(payload.get("format_version", 0))
    if version > MODEL_FORMAT_VERSION:
        raise UserInputError(
            path, f"model format {version} is newer than this cryojoint understands ({MODEL_FORMAT_VERSION}); "
            f"made by cryojoint {payload.get('cryojoint_version')}: upgrade cryojoint"
        )
    return payload


def build_network(config: CryojointConfig) -> torch.nn.Module:
    from cryojoint.models.joint import JointModel
    from cryojoint.modes import model_parts

    use_denoiser, use_detector = model_parts(config.train.mode)
    return JointModel(config.model, use_denoiser=use_denoiser, use_detector=use_detector)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load ``model.pt`` (or a shipped model by name, e.g. ``"general"``) for prediction (eval mode, on ``device``)."""
    payload = read_model_file(path)
    config = CryojointConfig.from_dict(payload["config"], source=path)
    network = build_network(config)
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise UserInputError(path, f"weights do not fit the architecture in its config ({err})") from None
    network.to(device).eval()
    meta = dict(payload.get("meta", {}))
    return LoadedModel(network, config, float(meta["particle_diameter_px"]), float(meta.get("downsample", 1)), meta)
