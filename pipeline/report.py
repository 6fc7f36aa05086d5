"""Kept only so ``python -m pipeline.report`` still works: the code lives in pipeline.records.report."""
from .records.report import main

if __name__ == "__main__":
    raise SystemExit(main())
