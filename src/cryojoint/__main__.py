"""``python -m cryojoint``: the same command line as the ``cryojoint`` script."""

from cryojoint.cli import main

if __name__ == "__main__":
    main()
