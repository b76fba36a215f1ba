"""``python -m archbench.cli``: the ``archbench`` command."""

from archbench.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
