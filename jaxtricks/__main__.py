"""``python -m jaxtricks``: the command line (see :mod:`jaxtricks.cli.main`)."""

from jaxtricks.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
