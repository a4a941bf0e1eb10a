"""Every example of the original Durable README, ported to Python. Import a module to register its workflow."""
