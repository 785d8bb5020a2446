"""The `xvol` command line (installed as the `xvol_cli` package)."""
