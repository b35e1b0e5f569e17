"""``python -m ensemble_lab``: the same command as ``ensemble-lab``."""

from ensemble_lab.cli import main

if __name__ == "__main__":
    main()
