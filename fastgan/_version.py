"""fastgan's version, alone so that setup.py, pyproject.toml and fastgan._ext read it without
importing the package (which imports torch)."""

__version__ = "0.1.0"
