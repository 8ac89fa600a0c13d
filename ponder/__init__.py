"""ponder: build small reasoning models with RL on verifiable tasks."""

__version__ = "0.1.0"
