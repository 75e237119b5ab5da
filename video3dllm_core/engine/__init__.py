"""The scene engine: a stream of posed RGB-D frames in, answers and world-frame boxes out.

    from video3dllm_core.engine import SceneEngine, EngineConfig

    engine = SceneEngine.load(EngineConfig(model_path=None))   # None: embedded default model
    for frame in frames:                                        # any thread, sensor rate
        engine.add_frame(frame)
    answer = engine.query("where is the red chair?")            # task "auto" -> "ground"
    answer.objects[0].center_xyz                                # world frame

See docs/engine.md for the flow, caching, hysteresis, thread model and error answers.
"""

from video3dllm_core.engine.config import EngineConfig, EngineStats
from video3dllm_core.engine.core import SceneEngine
from video3dllm_core.engine.tasks import ENGINE_TASK_PROMPTS, decide_task

__all__ = ["SceneEngine", "EngineConfig", "EngineStats", "decide_task", "ENGINE_TASK_PROMPTS"]
