"""ScanNet readers: .sens RGB-D streams, posed-images export, scene point clouds and GT boxes.

* `sens`: read (streaming) and write ScanNet's `.sens` format.
* `export`: `.sens` -> posed-images directories (NNNNN.jpg/.png/.txt + intrinsics), in parallel.
* `scene`: `<scene>.txt` axis alignment, `_vh_clean_2.ply`, aggregation and segs JSON -> aligned
  point cloud and axis-aligned ground-truth object boxes, as upstream's preprocessing computes them.
"""

from video3dllm_training.scannet.export import ExportResult, ScanNetExportError, export_many, export_posed_images
from video3dllm_training.scannet.scene import (
    ScanNetScene,
    SceneObject,
    SegGroup,
    load_scannet_scene,
    object_boxes,
    read_aggregation,
    read_mesh_vertices,
    read_segments,
)
from video3dllm_training.scannet.sens import SensFrame, SensHeader, read_sens, read_sens_header, write_sens

__all__ = [
    "ExportResult",
    "ScanNetExportError",
    "ScanNetScene",
    "SceneObject",
    "SegGroup",
    "SensFrame",
    "SensHeader",
    "export_many",
    "export_posed_images",
    "load_scannet_scene",
    "object_boxes",
    "read_aggregation",
    "read_mesh_vertices",
    "read_segments",
    "read_sens",
    "read_sens_header",
    "write_sens",
]
