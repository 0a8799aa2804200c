"""scripts/gpu_test_shards.py: the split of the GPU tests over shards and the reading of pytest's summary."""
import os

import pytest

from script_modules import load_script
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
shards = load_script("gpu_test_shards")


def _ids(f, n):
    return [f"tests/{f}::t[{i}]" for i in range(n)]


def test_every_id_lands_in_one_shard_and_files_stay_whole():
    ids = _ids("test_a.py", 30) + _ids("test_numba_b.py", 10) + _ids("test_c.py", 170) + _ids("test_d.py", 5)
    out = shards.split(ids, 4, piece=80)
    flat = [i for s in out for i in s.ids]
    assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))
    # a file of at most `piece` tests is in one shard; test_c (170) is cut into pieces of at most 80
    for f in ("test_a.py", "test_numba_b.py", "test_d.py"):
        assert sum(any(i.startswith(f"tests/{f}") for i in s.ids) for s in out) == 1
    assert max(sum(i.startswith("tests/test_c.py") for i in s.ids) for s in out) <= 80
    # the Numba file weighs 3x: 10 tests load 30
    assert sum(s.load for s in out) == 30 + 3 * 10 + 170 + 5


def test_the_split_balances_and_drops_empty_shards():
    out = shards.split(_ids("test_a.py", 100) + _ids("test_b.py", 100), 2, piece=50)
    assert [s.load for s in out] == [100, 100]
    assert len(shards.split(_ids("test_a.py", 3), 8)) == 1
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        shards.split(_ids("test_a.py", 3), 0)


def test_pytest_summary_lines_are_read():
    assert shards.counts("160 passed, 32 warnings in 5.89s") == {"passed": 160}
    assert shards.counts("3 failed, 150 passed, 2 errors, 4 skipped in 9.0s") == \
        {"failed": 3, "passed": 150, "error": 2, "skipped": 4}
    assert shards.counts("1 error in 0.5s") == {"error": 1}


@pytest.mark.slow
def test_nothing_run_exits_1(tmp_path, capsys):
    """On a machine without a GPU every GPU test skips: no test passed, so the command fails."""
    from workbench import backends
    if backends.gpu_available():
        pytest.skip("needs a machine without a GPU")
    rc = shards.main(["--jobs", "2", "--out", str(tmp_path), "--", "tests/test_fast_launch.py"])
    out = capsys.readouterr().out
    assert rc == 1 and "0 passed" in out and " skipped" in out
    logs = sorted(p.stem for p in tmp_path.glob("s*.txt"))
    assert logs and logs == sorted(p.stem for p in tmp_path.glob("s*.ids"))     # one log per shard run


def test_an_earlier_runs_times_balance_the_shards(tmp_path):
    """--times: each id weighs its earlier shard's seconds per test; ids not seen weigh the median."""
    slow, fast = _ids("test_slow.py", 10), _ids("test_fast.py", 10) + _ids("test_fast2.py", 10)
    (tmp_path / "s0.ids").write_text("\n".join(slow) + "\n")
    (tmp_path / "s0.txt").write_text("...\n10 passed, 3 warnings in 400.00s (0:06:40)\n")
    (tmp_path / "s1.ids").write_text("\n".join(fast) + "\n")
    (tmp_path / "s1.txt").write_text("20 passed in 20.0s\n")
    (tmp_path / "s2.ids").write_text("tests/x.py::never\n")                  # no log: not read
    sec = shards.measured_seconds(str(tmp_path))
    assert sec[slow[0]] == 40.0 and sec[fast[0]] == 1.0 and "tests/x.py::never" not in sec
    new = _ids("test_new.py", 4)
    out = shards.split(slow + fast + new, 2, piece=80, seconds=sec)
    # counted, the slow file would share a shard with one fast file; timed, it runs alone
    assert sorted(len(s.ids) for s in out) == [10, 24]
    assert sorted(s.load for s in out) == [20 + 4 * 1.0, 400.0]         # the median of 40 x 10, 1 x 20 is 1


def test_junit_reports_give_each_test_its_own_time(tmp_path):
    (tmp_path / "s0.ids").write_text("tests/test_a.py::t[0]\ntests/test_a.py::t[1]\n")
    (tmp_path / "s0.txt").write_text("2 passed in 10.0s\n")
    (tmp_path / "s0.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="t[0]" time="9.5"/>'
        '<testcase classname="tests.test_a" name="t[1]" time="0.5"/></testsuite></testsuites>')
    assert shards.measured_seconds(str(tmp_path)) == {"tests/test_a.py::t[0]": 9.5, "tests/test_a.py::t[1]": 0.5}
