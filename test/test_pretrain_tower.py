"""Vision tower pretraining (`video3dllm pretrain-tower`): per-patch targets from the object boxes, a tower
that learns them, everything else in the checkpoint untouched, and `init-model --vision-tower-from`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from video3dllm_core.cli import main as cli_main
from video3dllm_core.model import Video3DLLM
from video3dllm_training.pretrain_tower import patch_targets

TOWER_PREFIX = "model.vision_tower."


def test_patch_targets_follow_the_box_holding_most_points() -> None:
    # a 28 x 28 image = 2 x 2 patches of 14 px; boxes: A = [0,1]^3 (class 3), B = [2,3]^3 (class 5)
    world = torch.full((1, 28, 28, 3), 10.0)  # outside both boxes
    world[0, :14, :14] = 0.5  # patch (0,0): all 196 points in A
    world[0, :6, 14:] = 0.5  # patch (0,1): 84 points in A, 112 in B -> B
    world[0, 6:14, 14:] = 2.5
    world[0, 14:21, :14] = 2.5  # patch (1,0): 98 points in B, exactly min_inside_points(14) -> B
    world[0, 14:20, 14:] = 0.5  # patch (1,1): 84 points in A, under the threshold -> background
    boxes = torch.tensor([[0.5, 0.5, 0.5, 1.0, 1.0, 1.0], [2.5, 2.5, 2.5, 1.0, 1.0, 1.0]])
    got = patch_targets(world, boxes, torch.tensor([3, 5]), background=9, patch_size=14, grid=2)
    assert got.tolist() == [[3, 5, 5, 9]]
    assert patch_targets(world, torch.zeros((0, 6)), torch.zeros(0, dtype=torch.long), 9, 14, 2).tolist() == [[9] * 4]


@pytest.fixture(scope="module")
def bench(small_model_benchmark: Path) -> Path:
    return small_model_benchmark


@pytest.fixture(scope="module")
def pretrained(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    assert cli_main(["init-model", str(bench), str(root / "init")]) == 0
    assert cli_main(["pretrain-tower", str(bench), str(root / "init"), str(root / "tower"), "--epochs", "8",
                     "--batch-size", "6", "--lr", "3e-3"]) == 0
    return root / "init", root / "tower"


def test_pretrain_tower_trains_only_the_tower_and_learns_the_train_patches(pretrained: tuple[Path, Path]) -> None:
    init, tower = pretrained
    before, after = load_file(str(init / "model.safetensors")), load_file(str(tower / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(TOWER_PREFIX) for k in changed)
    assert any("encoder.layers" in k for k in changed) and any("patch_embedding" in k for k in changed)
    for name in ("tokenizer.json", "config.json"):
        assert json.loads((tower / name).read_text()) == json.loads((init / name).read_text()), name
    Video3DLLM.from_pretrained(tower, device="cpu")  # loads as a model
    record = json.loads((tower / "tower_pretraining.json").read_text())
    history = record["history"]
    assert [row["epoch"] for row in history] == list(range(1, 9))
    assert "chair" in record["classes"]["label"] or "table" in record["classes"]["label"]
    # one train room: the tower fits its object patches far beyond the first epoch
    assert history[-1]["train_label"] > max(0.6, history[0]["train_label"] + 0.2), history
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0.0 <= row["val_label"] <= 1.0 and 0.0 <= row["val_colour"] <= 1.0 for row in history)


def test_init_model_takes_the_pretrained_tower(bench: Path, pretrained: tuple[Path, Path], tmp_path: Path) -> None:
    init, tower = pretrained
    assert cli_main(["init-model", str(bench), str(tmp_path / "nope"), "--no-position-embedding",
                     "--vision-tower-from", str(tower)]) == 0
    fresh, source = load_file(str(init / "model.safetensors")), load_file(str(tower / "model.safetensors"))
    got = load_file(str(tmp_path / "nope" / "model.safetensors"))
    for key, value in got.items():
        expected = source[key] if key.startswith(TOWER_PREFIX) else fresh[key]  # same seed: the rest is init's
        assert torch.equal(value, expected), key
    assert json.loads((tmp_path / "nope" / "config.json").read_text())["world_position_embedding_type"] == "none"


def test_pretrain_tower_names_the_room_whose_objects_json_does_not_match(
        bench: Path, pretrained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    broken = tmp_path / "b"
    shutil.copytree(bench, broken)
    train_scenes = json.loads((broken / "metadata" / "scannet_train_gt_box.json").read_text())
    scene = broken / "posed_images" / sorted(train_scenes)[0].split("/")[-1]
    doc = json.loads((scene / "objects.json").read_text())
    doc["objects"] = doc["objects"][:-1]
    (scene / "objects.json").write_text(json.dumps(doc))
    assert cli_main(["pretrain-tower", str(broken), str(pretrained[0]), str(tmp_path / "out"), "--epochs", "1"]) == 2
    kept = len(doc["objects"])
    assert (f"pretrain-tower: error: {scene.name}: {kept + 1} boxes in the box file, {kept} objects in objects.json"
            in capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
