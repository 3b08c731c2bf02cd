"""``python -m streams`` is the ``xsp`` command."""

from streams.cli import main

if __name__ == "__main__":
    main()
