"""``python -m xvol_export`` runs the ``xvol`` command line."""

from xvol_cli.app import main

if __name__ == "__main__":
    main()
