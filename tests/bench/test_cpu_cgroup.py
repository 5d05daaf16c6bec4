"""bench/cpu_cgroup.py: a real child cgroup with a CPU quota, entered by the command it runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cnnserve.bench import cpu_cgroup
from cnnserve.contracts.errors import CnnserveError

DATA = Path(__file__).parent / "data"


def test_a_command_runs_inside_a_new_limited_cgroup_which_is_gone_afterwards(capfd):
    """The process inside reads its own quota through contracts/cpu_limits.py from the real
    kernel files (/proc/self/cgroup, mountinfo, the cgroup's quota and usage)."""
    found = cpu_cgroup.writable_cpu_hierarchy()
    if found is None:
        pytest.skip("no cgroup hierarchy with the cpu controller is writable here")
    before = set(found[0].iterdir())
    probe = (
        "from cnnserve.contracts.cpu_limits import cpu_quota\n"
        "quota = cpu_quota()\n"
        "print(quota.cores, quota.directory.name, quota.usage_ns())\n"
    )
    assert cpu_cgroup.main(["--cpus", "0.5", "--", sys.executable, "-c", probe]) == 0
    cores, name, used = capfd.readouterr().out.split()
    assert cores == "0.5" and name.startswith("cnnserve-run-")
    # cgroup v2 counts the cgroup's CPU time beside its quota; v1 only where cpuacct shares the
    # hierarchy (Docker's "cpu,cpuacct"), not when it is mounted apart, as on some hosts.
    assert used == "None" if found[1] == "v1" and not _cpuacct_beside_cpu() else int(used) > 0
    assert set(found[0].iterdir()) == before
    assert cpu_cgroup.main(["--cpus", "1", "--", "sh", "-c", "exit 3"]) == 3  # the command's status


def _cpuacct_beside_cpu() -> bool:
    from cnnserve.contracts.cpu_limits import cgroup_mounts

    mounts = cgroup_mounts(Path("/proc/self/mountinfo").read_text())
    return any(m.fstype == "cgroup" and {"cpu", "cpuacct"} <= m.options for m in mounts)


def test_bad_quotas_and_missing_commands_say_what_to_do(monkeypatch: pytest.MonkeyPatch, capsys):
    with pytest.raises(CnnserveError, match="above 0 cores, received 0"), cpu_cgroup.quota_cgroup(0):
        pass
    with pytest.raises(SystemExit):
        cpu_cgroup.main(["--cpus", "1"])
    assert "name the command to run after --" in capsys.readouterr().err
    monkeypatch.setattr(cpu_cgroup, "writable_cpu_hierarchy", lambda: None)
    assert cpu_cgroup.main(["--cpus", "1", "--", "true"]) == 2
    assert (
        "cpu_cgroup: no cgroup hierarchy with the cpu controller is writable here" in capsys.readouterr().err
    )


def test_benchmarks_md_shows_the_recorded_training_runs_in_a_one_cpu_cgroup():
    benchmarks = (Path(__file__).parents[2] / "BENCHMARKS.md").read_text()
    for threads in (2, 1):
        rates = [
            json.loads((DATA / f"cpu_quota_train_threads{threads}_round{r}.json").read_text())["points"][0]
            for r in (1, 2)
        ]
        cells = " / ".join(f"{p['examples_per_s']:,.0f}" for p in rates)
        assert f"| {threads} | {cells} |" in benchmarks
