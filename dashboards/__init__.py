"""LayerWatch dashboards: live Dash page and post-build reports (issues 6 and 7 build them)."""
