"""beoboot: builds the images a diskless cluster node boots, and the agent that runs in them."""

__version__ = "0.1.0"
