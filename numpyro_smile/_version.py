"""The package version, in one place: ``numpyro_smile.__version__``, the wheel's metadata
(``pyproject.toml`` reads it) and the version recorded in checkpoints and InferenceData attrs."""

__version__ = "0.1.0"
