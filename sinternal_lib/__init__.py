"""SInternal reproducibility kit: verification-based safety training for reasoning models.

Importing the package has no side effects; see README.md for the pipeline and `python -m sinternal_lib`.
"""

__version__ = "0.1.0"
