"""Reading upstream checkpoint folders: weight files, key mapping, strict loading, generation config.

A checkpoint folder holds ``config.json``, the weights as ``model.safetensors`` or as shards
listed in ``model.safetensors.index.json``, optionally ``generation_config.json`` and the
tokenizer files (loaded by :func:`video3dllm_core.model.prompts.load_tokenizer`). Everything is
read from local files: no hub, no remote code, and pickled ``.bin`` weights only with an explicit
``allow_pickle=True`` (unpickling can run code).

Loading is strict: every checkpoint key must map to a parameter and every parameter must be
loaded, with the shapes equal; errors name the keys (and both shapes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"

#: Upstream key prefixes -> attribute paths of :class:`~video3dllm_core.model.modeling.Video3DLLM`.
#: Order matters: the generic ``model.`` (decoder) rule comes after the multimodal ``model.*`` ones.
UPSTREAM_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower.tower."),
    ("model.mm_projector.", "mm_projector."),
    ("model.image_newline", "image_newline"),
    ("ground_head_obj.", "ground_head.obj."),
    ("ground_head_query.", "ground_head.query."),
    ("ground_head_zero_target", "ground_head.zero_target"),
    ("ground_head_box_size.", "ground_head.box_size."),  # ours: object_feature_type patch14-pe-size
    ("ground_head_match_text.", "ground_head.match.text."),  # ours: ground_attribute_match
    ("ground_head_match_obj.", "ground_head.match.obj."),
    ("ground_head_relation_landmark_out.", "ground_head.relation.landmark_out."),  # ours: ground_relation_match
    ("ground_head_relation_landmark.", "ground_head.relation.landmark."),
    ("ground_head_relation_weights.", "ground_head.relation.weights."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)

_MAX_LISTED = 12


class CheckpointError(ValueError):
    """The checkpoint's weights do not fit the model (unexpected/missing keys, shape mismatch, bad files)."""


def upstream_key_to_module(key: str) -> str | None:
    """Map an upstream checkpoint key to the Video3DLLM attribute path (None when no rule applies)."""
    for prefix, target in UPSTREAM_PREFIXES:
        if prefix.endswith("."):
            if key.startswith(prefix):
                return target + key[len(prefix):]
        elif key == prefix:
            return target
    return None


def module_key_to_upstream(name: str) -> str:
    """Inverse of :func:`upstream_key_to_module` (for error messages): the key a checkpoint should hold."""
    for prefix, target in UPSTREAM_PREFIXES:
        if target.endswith("."):
            if name.startswith(target):
                return prefix + name[len(target):]
        elif name == target:
            return prefix
    return name


def find_weight_files(folder: str | Path, allow_pickle: bool = False) -> list[Path]:
    """The weight files of a checkpoint folder: one safetensors file or the shards of its index."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {root}")
    if (root / SAFE_SINGLE).is_file():
        return [root / SAFE_SINGLE]
    if (root / SAFE_INDEX).is_file():
        return _shards_from_index(root / SAFE_INDEX)
    pickled = [name for name in (PICKLE_SINGLE, PICKLE_INDEX) if (root / name).is_file()]
    if pickled:
        if not allow_pickle:
            raise CheckpointError(
                f"{root} holds only pickled weights ({pickled[0]}); refusing to unpickle (it can run code). "
                "Convert them to safetensors, or pass allow_pickle=True if you trust the file"
            )
        if (root / PICKLE_SINGLE).is_file():
            return [root / PICKLE_SINGLE]
        return _shards_from_index(root / PICKLE_INDEX)
    raise FileNotFoundError(
        f"no weights in {root}: expected {SAFE_SINGLE} or {SAFE_INDEX} (with its shards)"
    )


def _shards_from_index(index_path: Path) -> list[Path]:
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path}: not a weight index (needs a 'weight_map' object): {exc}") from exc
    shards = sorted(set(weight_map.values()))
    paths = [index_path.parent / name for name in shards]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"weight shard {path.name} listed in {index_path.name} is missing: {path}")
    return paths


class WeightReader:
    """Uniform key -> shape / tensor access over safetensors files (or trusted pickles), lazily."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self._stack = ExitStack()
        self._where: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for path in files:
            if path.suffix == ".safetensors":
                try:
                    handle = self._stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
                except Exception as exc:  # safetensors raises its own error types for corrupt headers
                    self.close()
                    raise CheckpointError(f"cannot read {path}: {exc}") from exc
                for key in handle.keys():
                    self._add(key, handle, tuple(handle.get_slice(key).get_shape()), path)
            else:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
                for key, tensor in state.items():
                    self._add(key, state, tuple(tensor.shape), path)

    def _add(self, key: str, source: Any, shape: tuple[int, ...], path: Path) -> None:
        if key in self._where:
            raise CheckpointError(f"key {key!r} appears in more than one weight file (again in {path.name})")
        self._where[key] = source
        self._shapes[key] = shape

    def __enter__(self) -> WeightReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def get(self, key: str) -> torch.Tensor:
        source = self._where[key]
        if isinstance(source, dict):
            return source[key]
        return source.get_tensor(key)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self._where:
            yield key, self.get(key)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: {shown}{more}"


def load_weights(module: nn.Module, reader: WeightReader, key_map: Callable[[str], str | None],
                 optional: frozenset[str] = frozenset(), source: str = "checkpoint",
                 key_name: Callable[[str], str] = lambda name: name) -> None:
    """Copy every checkpoint tensor into ``module`` (converting dtype), strictly.

    ``key_map`` maps a checkpoint key to a ``module.state_dict()`` name; ``optional`` names module
    entries that may stay unloaded (e.g. a tied ``lm_head.weight``); ``key_name`` renders a module
    entry as the checkpoint key it expects, for the "missing keys" message.
    """
    own = module.state_dict(keep_vars=True)
    pairs: dict[str, str] = {}
    unexpected: list[str] = []
    for key in reader.keys():
        target = key_map(key)
        if target is None or target not in own:
            unexpected.append(key)
        else:
            pairs[target] = key
    missing = sorted(key_name(name) for name in own if name not in pairs and name not in optional)
    problems = []
    if unexpected:
        problems.append(f"unexpected keys in the checkpoint {_listing(sorted(unexpected))}")
    if missing:
        problems.append(f"missing keys (model parameters the checkpoint lacks) {_listing(missing)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    mismatched = [
        f"{key!r}: checkpoint {list(reader.shape(key))} vs model {list(own[target].shape)}"
        for target, key in sorted(pairs.items())
        if tuple(reader.shape(key)) != tuple(own[target].shape)
    ]
    if mismatched:
        listed = "; ".join(mismatched[:_MAX_LISTED])
        raise CheckpointError(f"{source}: shape mismatch for {len(mismatched)} key(s): {listed}")
    with torch.no_grad():
        for target, key in pairs.items():
            tensor = reader.get(key)
            if tensor.is_floating_point() != own[target].is_floating_point():
                raise CheckpointError(f"{source}: {key!r} has dtype {tensor.dtype}, model expects {own[target].dtype}")
            own[target].data.copy_(tensor)


def load_generation_config(folder: str | Path, text_config: Any) -> Any:
    """``generation_config.json`` when present, else the defaults the decoder config implies."""
    from transformers import GenerationConfig

    root = Path(folder)
    if (root / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(str(root), local_files_only=True)
    return GenerationConfig.from_model_config(text_config)


def save_checkpoint(model: Any, directory: str | Path) -> Path:
    """Write ``model`` (a :class:`~video3dllm_core.model.modeling.Video3DLLM`) as an upstream checkpoint folder.

    The inverse of ``Video3DLLM.from_pretrained``, like transformers' ``save_pretrained``:

    * ``model.safetensors``: every parameter under its upstream key (:func:`module_key_to_upstream`),
      in the model's dtype; a tied ``lm_head.weight`` is left out, as upstream does;
    * ``config.json``: the checkpoint's own config (``model.config.raw``) with ``vocab_size``,
      ``tie_word_embeddings`` and ``torch_dtype`` updated from the weights;
    * the vision tower's ``config.json`` in a sub-folder named by ``mm_vision_tower`` (with the
      encoder layer upstream deletes counted back in), unless the name is a built-in tower config;
    * ``generation_config.json`` and the tokenizer files when the model has them.

    Returns the folder. Raises CheckpointError when a parameter has no upstream key or the config
    has no raw config.json dict.
    """
    from safetensors.torch import save_file

    from .vision import BUILTIN_TOWER_CONFIGS

    root = Path(directory)
    raw = dict(getattr(model.config, "raw", None) or {})
    if not raw:
        raise CheckpointError("model.config.raw is empty: save_checkpoint needs the config.json dict the model was built from")
    lm = model.language_model
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "language_model.lm_head.weight":
            continue
        key = module_key_to_upstream(name)
        if upstream_key_to_module(key) != name:
            raise CheckpointError(f"parameter {name!r} has no upstream checkpoint key (UPSTREAM_PREFIXES)")
        tensors[key] = tensor.detach().to("cpu").contiguous()
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / SAFE_SINGLE), metadata={"format": "pt"})

    raw["vocab_size"] = int(lm.get_input_embeddings().weight.shape[0])
    raw["tie_word_embeddings"] = tied
    raw["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    tower_name = str(raw.get("mm_vision_tower") or model.config.mm_vision_tower)
    kept = model.vision_tower.config.to_dict()
    tower_keys = BUILTIN_TOWER_CONFIGS["google/siglip-so400m-patch14-384"].keys()
    tower = {k: kept[k] for k in tower_keys if k in kept}
    tower["num_hidden_layers"] = int(tower["num_hidden_layers"]) + 1  # the layer upstream deletes on load
    if BUILTIN_TOWER_CONFIGS.get(tower_name) != tower:
        folder = Path(tower_name).name or "vision_tower"
        tower["model_type"] = "siglip_vision_model"
        (root / folder).mkdir(exist_ok=True)
        (root / folder / "config.json").write_text(json.dumps(tower, indent=2, sort_keys=True) + "\n")
        raw["mm_vision_tower"] = folder
    (root / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(root))
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save_pretrained(str(root))
    return root
