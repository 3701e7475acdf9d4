"""The registered datasets, one module each; every module here is imported on first lookup."""
