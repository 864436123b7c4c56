"""flowscale_ray."""
