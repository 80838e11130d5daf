"""HTTP layer: routers translate requests into service calls and back."""
