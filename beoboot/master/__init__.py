"""The master side: `beoserv` (one long-running aiohttp server) and `bpstat` (the console view of it)."""
