"""TensorRT custom layers for qfsdk graphs: ``qfsdk::FakeQuantize`` (from ``qfsdk convert --int6-plugin``).

- ``qfsdk_fakequant.py``: the plugin for TensorRT >= 10.9 (``tensorrt.plugin``, ahead-of-time PTX kernel
  baked into the engine); pass ``PYTHON_PLUGIN`` to ``qfsdk build --plugins``. It imports tensorrt, so
  nothing here imports it.
- ``ptx.py``: that kernel's PTX text (made without a GPU).
- ``cpp/``: an IPluginV3 library for TensorRT 10.3 / JetPack 6 (``libqfsdk_trt_plugins.so``, CMake).
"""

from __future__ import annotations

from pathlib import Path

PYTHON_PLUGIN = Path(__file__).with_name("qfsdk_fakequant.py")
