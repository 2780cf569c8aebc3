"""Pipelines that build and measure a model's steering: activation collection, SAE training,
feature labels, refusal-feature discovery, the harm gate, evaluation, calibration and align.
Built on `runtime` and `core`; nothing in `runtime` imports them."""
