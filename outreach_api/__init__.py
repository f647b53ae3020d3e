"""The HTTP door: a thin Litestar app over the core in `outreach_pipeline.core`."""
