"""The HTTP layer: routes translate requests and delegate to the core."""
