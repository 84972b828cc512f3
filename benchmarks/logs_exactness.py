"""Log exactness: a job prints 1,000,000 numbered lines; three `bacalhau logs -f` followers read it, one of
them attaching late. Each must get every line, in order, once.

    .venv/bin/python benchmarks/logs_exactness.py [--lines 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import time

from _serve import BIN, IMAGE, running_execution, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    expected = "".join(f"{i}\n" for i in range(1, args.lines + 1)).encode()
    with serve() as served:
        job_id = subprocess.run([BIN, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c",
                                 f"usleep 500000; seq 1 {args.lines}"],
                                env=served.env, capture_output=True, text=True, check=True).stdout.strip()
        running_execution(served.client, job_id)
        start = time.perf_counter()
        followers = [subprocess.Popen([BIN, "logs", "-f", job_id], env=served.env, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL) for _ in range(2)]
        time.sleep(1.0)
        followers.append(subprocess.Popen([BIN, "logs", "-f", job_id], env=served.env, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL))
        ok = True
        for i, proc in enumerate(followers):
            out, _ = proc.communicate(timeout=600)
            same = out == expected
            ok &= same
            print(f"follower {i + 1}{' (late)' if i == 2 else ''}: {len(out)} bytes, "
                  f"{len(out.splitlines())} lines, exact={same}, "
                  f"sha256 {hashlib.sha256(out).hexdigest()[:12]}")
        print(f"{args.lines} lines to 3 followers in {time.perf_counter() - start:.1f}s: "
              f"{'all exact' if ok else 'MISMATCH'}")
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
