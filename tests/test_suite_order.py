"""The suite's own order (tests/conftest.py): the longest tests start first, one pair per xdist worker."""

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def suite_conftest():
    """tests/conftest.py as a module of its own name (pytest loads it as a plugin, not as an importable module)."""
    spec = importlib.util.spec_from_file_location("suite_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Item:
    def __init__(self, nodeid: str, slow: bool = False):
        self.nodeid, self.slow = nodeid, slow

    def get_closest_marker(self, name: str):
        return object() if name == "slow" and self.slow else None


def test_each_of_the_longest_tests_exists():
    for nodeid in suite_conftest().LONGEST_FIRST:
        path, name = nodeid.split("::")
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), flags=re.M), f"{nodeid} is not a test"


def test_the_longest_go_first_and_third_with_a_short_one_behind_the_longest():
    conftest = suite_conftest()
    longest = [Item(nodeid) for nodeid in conftest.LONGEST_FIRST]
    longest[2] = Item(longest[2].nodeid + "[case.ipynb]")  # a parametrized test is matched by its base name
    others = [Item("tests/a.py::test_quick"), Item("tests/b.py::test_slow", slow=True), Item("tests/c.py::test_z")]
    items = others + longest[::-1]
    conftest.pytest_collection_modifyitems(None, items)
    # xdist (-n 2 --maxschedchunk 1) gives items 1-2 to one worker and 3-4 to the other, then one at a time
    assert [i.nodeid for i in items] == [
        longest[0].nodeid,
        "tests/b.py::test_slow",  # the first of the rest (the slow ones come before the others)
        longest[1].nodeid,
        longest[2].nodeid,
        longest[3].nodeid,
        "tests/a.py::test_quick",
        "tests/c.py::test_z",
    ]


def test_a_run_of_only_some_tests_keeps_them_all():
    conftest = suite_conftest()
    items = [Item("tests/a.py::test_one"), Item(conftest.LONGEST_FIRST[1])]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == [conftest.LONGEST_FIRST[1], "tests/a.py::test_one"]
