"""alignkit: align language models with human preferences (SFT, DPO and friends) from one CLI."""

__version__ = "0.1.0"
