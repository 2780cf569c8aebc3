"""The runtime: loading a model, the SAE, the steering hook, the steered model, chat sessions,
batched generation and the refusal judge. Imports `core`, never `pipelines`."""
