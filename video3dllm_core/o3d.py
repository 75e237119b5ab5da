"""Import Open3D reliably on machines without the system libusb.

The open3d wheels link against `libusb-1.0.so.0`, which minimal machines (CI, containers) lack.
The PyPI package `libusb-package` ships that library; loading it into the process first lets
`import open3d` succeed without a system package. Use `from video3dllm_core.o3d import o3d`.
"""

from __future__ import annotations

import ctypes

try:  # a system libusb, when present, is used by the dynamic loader as usual
    import libusb_package

    _lib = libusb_package.get_library_path()
    if _lib is not None:
        ctypes.CDLL(str(_lib), mode=ctypes.RTLD_GLOBAL)
except ImportError:  # pragma: no cover - only without the pinned requirements
    pass

import open3d as o3d  # noqa: E402

__all__ = ["o3d"]
