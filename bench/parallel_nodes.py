"""Benchmark: what a phase that stops or starts N Kong nodes costs, one node after the other
(a plain loop, as the roles did before nodes.yml) and all at once (nodes.yml: one async job per
node). Both ways run side by side in one lab, on the same nodes, several rounds; the output is
the median seconds of each and the ratios, never a pass/fail on wall-clock time.

    .venv/bin/python bench/parallel_nodes.py [--nodes 6] [--rounds 3]

Brings up its own lab (tests/lab/lab up with N X nodes; honours KONG_LAB_NET and
KONG_LAB_RUN_DIR) and takes it down afterwards. The nodes are the lab's X nodes: a stop and a
start of each, as in-place (stop X, start Y) and every rollback do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab" / "tests"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from ansible_runner import ansible_env  # noqa: E402  (tests/integration)
from labfixtures import running_lab  # noqa: E402  (tests/lab/tests)

# One play: stop then start the given nodes, timing each; "sequential" loops over kong_service,
# "parallel" goes through the role's nodes.yml.
PLAYBOOK = """\
- name: Stop and start Kong nodes, timed
  hosts: localhost
  gather_facts: false
  vars:
    bench_nodes: "{{ bench_nodes_csv.split(',') }}"
  tasks:
    - name: Note the time before the stop
      ansible.builtin.set_fact:
        bench_t0: "{{ now().timestamp() }}"
    - name: Stop the nodes one after the other
      kongops.upgrade.kong_service:
        kong_executable: "{{ hostvars[item].kong_executable }}"
        prefix: "{{ hostvars[item].kong_prefix }}"
        state: stopped
      delegate_to: "{{ item }}"
      loop: "{{ bench_nodes }}"
      when: bench_mode == 'sequential'
    - name: Stop the nodes at once
      ansible.builtin.include_role:
        name: kongops.upgrade.kong_upgrade
        tasks_from: nodes.yml
      vars:
        kong_upgrade_nodes: "{{ bench_nodes }}"
        kong_upgrade_nodes_state: stopped
      when: bench_mode == 'parallel'
    - name: Note the time after the stop
      ansible.builtin.set_fact:
        bench_t1: "{{ now().timestamp() }}"
    - name: Start the nodes one after the other
      kongops.upgrade.kong_service:
        kong_executable: "{{ hostvars[item].kong_executable }}"
        conf: "{{ hostvars[item].kong_conf_path }}"
        prefix: "{{ hostvars[item].kong_prefix }}"
        state: started
      delegate_to: "{{ item }}"
      loop: "{{ bench_nodes }}"
      when: bench_mode == 'sequential'
    - name: Start the nodes at once
      ansible.builtin.include_role:
        name: kongops.upgrade.kong_upgrade
        tasks_from: nodes.yml
      vars:
        kong_upgrade_nodes: "{{ bench_nodes }}"
        kong_upgrade_nodes_state: started
      when: bench_mode == 'parallel'
    - name: Print the timings
      ansible.builtin.debug:
        msg: "BENCH {{ {'stop': bench_t1 | float - bench_t0 | float, 'start': now().timestamp() - bench_t1 | float} | to_json }}"
    - name: Remove the async jobs' status files (as the roles' report does; not timed)
      ansible.builtin.include_role:
        name: kongops.upgrade.kong_upgrade
        tasks_from: cleanup_jobs.yml
      when: bench_mode == 'parallel'
"""


def run_once(inventory: Path, playbook: Path, mode: str, nodes: list[str]) -> dict[str, float]:
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook),
            "-e", json.dumps({"bench_mode": mode, "bench_nodes_csv": ",".join(nodes)})]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=ansible_env(), check=False, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run over {nodes} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    line = next(text for text in proc.stdout.splitlines() if '"BENCH ' in text)
    return json.loads(line.split('"BENCH ', 1)[1].rstrip('"').replace('\\"', '"'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=6, help="nodes per phase (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement (default 3)")
    args = parser.parse_args()
    with running_lab("--x-nodes", str(args.nodes), "--y-nodes", "1", "--x-version", "3.9.1",
                     "--y-version", "3.10.0") as lab, tempfile.TemporaryDirectory() as tmp:
        playbook = Path(tmp) / "bench.yml"
        playbook.write_text(PLAYBOOK, encoding="utf-8")
        every = sorted(lab.hosts("kong_x"))
        cases = [("sequential", every[:1]), ("parallel", every[:1]), ("sequential", every), ("parallel", every)]
        samples: dict[tuple[str, int], list[dict[str, float]]] = {(m, len(n)): [] for m, n in cases}
        for _round in range(args.rounds):
            for mode, nodes in cases:  # interleaved, so drift on a noisy machine hits every case alike
                samples[(mode, len(nodes))].append(run_once(lab.inventory_path, playbook, mode, nodes))
    median = {key: {phase: statistics.median(s[phase] for s in runs) for phase in ("stop", "start")}
              for key, runs in samples.items()}
    n = args.nodes
    print(f"Stop then start of Kong nodes on the lab, median of {args.rounds} rounds (seconds):")
    print(f"{'':28}{'stop':>8}{'start':>8}")
    for (mode, count), phases in median.items():
        print(f"{mode + ' x ' + str(count) + ' node(s)':28}{phases['stop']:8.2f}{phases['start']:8.2f}")
    for phase in ("stop", "start"):
        seq, par = median[("sequential", n)][phase], median[("parallel", n)][phase]
        print(f"{phase}: sequential/parallel over {n} nodes = {seq / par:.2f}; "
              f"{n} nodes / 1 node: sequential {seq / median[('sequential', 1)][phase]:.2f}, "
              f"parallel {par / median[('parallel', 1)][phase]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
