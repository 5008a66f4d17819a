"""The application layer: arguments, initialisation, the training loop, checkpointing."""
