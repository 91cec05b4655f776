"""Allow ``python -m sam3d``."""

from sam3d.cli import main

if __name__ == "__main__":
    main()
