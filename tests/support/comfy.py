"""Moved to :mod:`controller.sandbox.comfy` (one implementation for the demo and
the tests); kept so ``tests.support.comfy`` imports still work."""

from controller.sandbox.comfy import (
    FAKE_TORCH_VERSION,
    MAIN_PY,
    ComfyHome,
    build_venv_template,
    isolated_pip_env,
    make_comfy_home,
    make_venv,
    pip_install,
    venv_python,
)

__all__ = [
    "FAKE_TORCH_VERSION",
    "MAIN_PY",
    "ComfyHome",
    "build_venv_template",
    "isolated_pip_env",
    "make_comfy_home",
    "make_venv",
    "pip_install",
    "venv_python",
]
