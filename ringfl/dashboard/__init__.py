"""Web dashboard: a live run view and the model builder (``--dashboard HOST:PORT``)."""

from ringfl.dashboard.server import (
    create_app,
    dashboard_runner,
    run_with_dashboard,
    serve_builder,
    serve_dashboard,
)

__all__ = ["create_app", "dashboard_runner", "run_with_dashboard", "serve_builder", "serve_dashboard"]
