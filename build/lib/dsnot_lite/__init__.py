"""dsnot_lite: a small, exact, instrumented implementation of DSnoT (Dynamic Sparse No Training)."""

__version__ = "0.1.0"
