"""Pure torch.nn code: neighbours/sampling, centroid attention, backbone, heads (no Lightning)."""
