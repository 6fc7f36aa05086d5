"""Kept only so ``python -m pipeline.say`` still works: the code lives in pipeline.apps.say."""
from .apps.say import main

if __name__ == "__main__":
    raise SystemExit(main())
