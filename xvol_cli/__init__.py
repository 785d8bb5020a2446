"""The `xvol` command line (installed as the `xvol_cli` package)."""

from xvol_cli import interrupts as _interrupts

if _interrupts.is_xvol_command():  # the console script: signals handled before torch and ONNX import
    _interrupts.early()
