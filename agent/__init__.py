"""The beoboot agent: runs inside the node images (standard library only).

It never imports the builder. Its only contracts with the builder are `agent.config`, the schema of the
in-image config file that the builder writes and the agent reads, and `agent.schema`, the stages.
"""

__version__ = "0.1.0"
