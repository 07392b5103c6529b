"""airlock: sandboxes that reach exactly the GitHub repositories they were granted."""
