"""Import the built-in stages so that their ``register_stage`` decorators run."""

from . import denoiser, prior, ranker, text_encoders, vae_decoder, vocoder, writer  # noqa: F401
