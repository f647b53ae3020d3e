"""Templates routes."""
