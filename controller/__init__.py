"""The nodeferry controller: an aiohttp service that drives agents over SSH."""
