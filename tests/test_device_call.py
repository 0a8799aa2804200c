"""scripts/device_call.sh, the prelude of a short call on a lent GPU machine: its results folder, the timeline
el writes, the tarball that ships them to $OUT, left's timeouts, and call_end stopping the shipping loop."""
import os
import subprocess
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prelude_writes_the_timeline_and_ships_it(tmp_path):
    name = f"devcall{os.getpid()}"
    script = (f"source scripts/device_call.sh {name}\n"
              "el step one\n"
              "echo \"left=$(left 100) floor=$(left -100)\"\n"
              "echo extra > $W/extra.txt\n"
              "call_end\n")
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=dict(os.environ, OUT=str(tmp_path)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    left = dict(kv.split("=") for kv in r.stdout.split("\n")[1].split())
    assert 90 <= int(left["left"]) <= 100 and left["floor"] == "10"
    with tarfile.open(tmp_path / f"{name}.tgz") as tf:
        names = set(tf.getnames())
        timeline = tf.extractfile(f"{name}/timeline.txt").read().decode()
    assert {f"{name}/commit.txt", f"{name}/gpu.txt", f"{name}/extra.txt"} <= names
    assert [ln.split("] ")[1] for ln in timeline.splitlines()] == ["step one", "all done"]
    subprocess.run(["rm", "-rf", f"/tmp/{name}"])


def test_warm_fla_takes_an_op_or_op_dtype(tmp_path):
    name = f"devcallfla{os.getpid()}"
    fake = tmp_path / "fake_python"                      # stands in for python: echoes the command it was given
    fake.write_text("#!/usr/bin/env bash\necho \"$@\"\n")
    fake.chmod(0o755)
    script = (f"source scripts/device_call.sh {name}\n"
              "warm_fla linear decayed:bfloat16\n"
              "wait $FPIDS\n"
              "cat $W/flac-linear.txt $W/flac-decayed-bfloat16.txt\n"
              "call_end\n")
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=dict(os.environ, OUT=str(tmp_path), PYTHON=str(fake)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with open(f"/tmp/{name}/ceilings.txt") as f:       # the ceilings measured before fla's autotuning starts
        assert "get_ceilings(gpu=True, remeasure=True)" in f.read()
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("cli.py bench")]
    assert lines == ["cli.py bench --grid headline --op linear --backend peer --dtype float32 --T 1024 --budget 5",
                     "cli.py bench --grid headline --op decayed --backend peer --dtype bfloat16 --T 1024 --budget 5"]
    subprocess.run(["rm", "-rf", f"/tmp/{name}"])
