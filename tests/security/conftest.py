import pytest


def pytest_collection_modifyitems(items):
    # The attack suite runs against real servers: it belongs with the
    # end-to-end tests.
    for item in items:
        if "/security/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
