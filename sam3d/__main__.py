"""Allow ``python -m sam3d``."""

from sam3d.console import main

if __name__ == "__main__":
    main()
