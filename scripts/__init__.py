"""Command-line tools of pp-runtime (console entry points point at their ``main``)."""
