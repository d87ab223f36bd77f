"""LayerWatch dashboards: the live Dash page and the post-build 3D reports."""
