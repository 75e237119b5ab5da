"""Sub-commands of the `video3dllm` CLI (see video3dllm_core.cli)."""
