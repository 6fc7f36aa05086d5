"""Kept only so ``python -m pipeline.audition`` still works: the code lives in pipeline.apps.audition."""
from .apps.audition import main

if __name__ == "__main__":
    raise SystemExit(main())
