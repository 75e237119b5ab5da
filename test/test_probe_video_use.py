"""benchmarks/probe_video_use.py: the same questions with another room's video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _bench_support import load_benchmark_script


@pytest.fixture(scope="module")
def probe():
    return load_benchmark_script("probe_video_use")


@pytest.fixture(scope="module")
def model_dir(small_model_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from video3dllm_core.cli import main as cli_main

    out = tmp_path_factory.mktemp("video_use") / "init"
    assert cli_main(["init-model", str(small_model_benchmark), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def model(model_dir: Path):
    from video3dllm_core.model import Video3DLLM

    loaded = Video3DLLM.from_pretrained(model_dir, device="cpu")
    loaded.eval()
    return loaded


def test_each_room_gets_another_rooms_video(probe, small_model_benchmark: Path, tmp_path: Path) -> None:
    others = probe.other_rooms(small_model_benchmark)
    rooms = sorted(p.name for p in (small_model_benchmark / "posed_images").iterdir() if p.is_dir())
    assert sorted(others) == rooms and sorted(others.values()) == rooms  # a permutation of the rooms
    assert all(room != other for room, other in others.items())
    lonely = tmp_path / "b"
    (lonely / "posed_images" / rooms[0]).mkdir(parents=True)
    with pytest.raises(SystemExit, match="1 room.*at least 2"):
        probe.other_rooms(lonely)


def test_teacher_forcing_scores_the_answer_tokens(probe, model, small_model_benchmark: Path) -> None:
    """The cross-entropy and the first-word check against the language model run directly on the merged
    input (an off-by-one in the answer's slice would score the wrong tokens)."""
    from video3dllm_core.model.prompts import Task, build_input_ids
    from video3dllm_training.data import SceneStore, load_frames_file

    bench = small_model_benchmark
    store = SceneStore(bench / "posed_images", frames_file=load_frames_file(bench / "metadata" / "scannet_select_frames.json"),
                       ingest_config=model.ingest_config())
    room = sorted(p.name for p in (bench / "posed_images").iterdir() if p.is_dir())[0]
    frames = store.frames(room, "mc", 4)
    visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]),
                                 np.stack([f.patch_world_coords for f in frames]))
    prompt = build_input_ids(model.tokenizer, Task.SCANQA, "<image> What colour is the chair? Answer the question simply.",
                             newline_after_image=model.config.prompt_newline_after_image).input_ids
    ids, targets = probe.answer_span(model, list(prompt), "red")
    assert ids[:len(prompt)] == list(prompt) and ids[len(prompt):] == targets
    assert model.tokenizer.decode(targets) == "red<|im_end|>"
    loss, right = probe.teacher_forced(model, ids, targets, visual, None)

    merged = model.build_inputs_embeds(ids, visual)
    with torch.no_grad():
        logits = model.language_model(inputs_embeds=merged.embeds[None]).logits[0].float()
    expected = logits[-len(targets) - 1:-1]  # the states before each target predict it
    assert loss == pytest.approx(float(F.cross_entropy(expected, torch.tensor(targets))), rel=1e-4)
    assert right == (int(torch.argmax(expected[0])) == targets[0])


def test_own_video_twice_changes_nothing_and_another_rooms_does(probe, model, small_model_benchmark: Path) -> None:
    bench = small_model_benchmark
    same = probe.swap_test(model, bench, "train", limit=4, others={room: room for room in probe.other_rooms(bench)})
    assert same.ground_own == same.ground_other and not any(same.ground_changed)
    for task, (own, other) in same.answer_ce.items():
        assert own and own == other, task

    swapped = probe.swap_test(model, bench, "train", limit=4)
    assert swapped.ground_own == same.ground_own  # own video: the same model, the same answers
    assert len(swapped.ground_own) == len(swapped.ground_other) > 0
    # a random decoder is not trained to ignore its video: another room's moves every answer's loss
    for task, (own, other) in swapped.answer_ce.items():
        assert own == same.answer_ce[task][0]
        assert all(abs(a - b) > 1e-6 for a, b in zip(own, other)), task

    text = probe.table([("random", swapped)])
    assert text.splitlines()[0].startswith(
        "| model | video token spread / 3D PE norm | ScanRefer acc: own video / other room's | choices changed |")
    assert "scan2cap colour word: own / other" in text


def test_token_spread_is_the_pooled_tokens_distance_from_their_mean(probe, model, small_model_benchmark: Path) -> None:
    from video3dllm_training.data import SceneStore, load_box_file, load_frames_file

    bench, meta = small_model_benchmark, small_model_benchmark / "metadata"
    store = SceneStore(bench / "posed_images", frames_file=load_frames_file(meta / "scannet_select_frames.json"),
                       ingest_config=model.ingest_config())
    (room,) = load_box_file(meta / "scannet_train_gt_box.json")
    frames = store.frames(room, "mc", 4)
    visual = model.encode_frames(np.stack([f.crop_rgb for f in frames]), np.stack([f.world_coords for f in frames]),
                                 np.stack([f.patch_world_coords for f in frames]))
    tokens = visual.pooled.double().numpy().reshape(-1, visual.pooled.shape[-1])  # every frame's pooled tokens
    expected = np.mean(np.linalg.norm(tokens - tokens.mean(axis=0), axis=1))
    pe = visual.position_embedding.double().numpy().reshape(-1, visual.pooled.shape[-1])
    spread, pe_norm = probe.token_spread(visual)
    assert spread == pytest.approx(expected, rel=1e-5) and spread > 0
    assert pe_norm == pytest.approx(np.mean(np.linalg.norm(pe, axis=1)), rel=1e-5)
    assert pe_norm == pytest.approx((model.config.hidden_size / 2) ** 0.5, rel=1e-3)  # sin/cos pairs: unit each
    result = probe.swap_test(model, bench, "train", limit=1)
    assert result.token_spread == [pytest.approx(spread, rel=1e-5)] and result.pe_norm == [pytest.approx(pe_norm, rel=1e-5)]


def test_main_checks_the_model_option(probe, small_model_benchmark: Path) -> None:
    with pytest.raises(SystemExit, match="expected NAME=CHECKPOINT"):
        probe.main(["--benchmark", str(small_model_benchmark), "--model", "just-a-path"])
