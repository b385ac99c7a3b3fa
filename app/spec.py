"""The method spec as the page links it: ``docs/method.md``, served by the app itself (``python app.py``
passes it to ``launch(allowed_paths=...)``), so the link works offline and on a Space alike."""
from __future__ import annotations

from pathlib import Path

METHOD_DOC = Path(__file__).resolve().parents[1] / "docs" / "method.md"
METHOD_URL = f"/gradio_api/file={METHOD_DOC}"   # Gradio's route for a file in allowed_paths (absolute path)


def method_link(section: int) -> str:
    """A markdown link to section ``section`` of docs/method.md, e.g. "[docs/method.md §8](...)"."""
    return f"[docs/method.md §{section}]({METHOD_URL})"
