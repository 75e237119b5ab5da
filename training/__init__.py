"""video3dllm_training: ScanNet preparation, five-task datasets, trainer and benchmark evaluation.

Installed under the name `video3dllm_training` (the source folder is `training/`).
"""
