"""rps: a Keras 3 / TensorFlow training pipeline for the Rock-Paper-Scissors hand-gesture
classifier. Stages: ``data -> models -> train -> export -> evaluate``; the ``rps`` command
(``rps.cli``) runs them. See README.md."""

__version__ = "0.1.0"
