"""The OccamToken web app: ``python app.py`` (layout in ui.py, runs in backend.py, views in the render package)."""
