"""nbval settings for the notebooks (``python -m pytest --nbval-lax --nbval-current-env notebooks/``).

tests/test_notebooks.py runs that command, so ``make test`` covers the notebooks too.
"""


def pytest_collectstart(collector):
    """Warnings and log lines on stderr (Lightning, torch) are not results: never compare them."""
    path = getattr(collector, "path", None)
    if path is not None and path.suffix == ".ipynb":
        collector.skip_compare += ("stderr", "text/html", "application/javascript")
