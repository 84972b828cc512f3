"""Submit-to-Completed latency of one Docker job through the official Bacalhau Python SDK (bacalhau-sdk 1.0.3,
the Bacalhau 1.0 API) against our own CLI (`bacalhau docker run`, which waits), on the same job and the same
`bacalhau serve`, interleaved, median of N each.

The SDK runs in one long-lived process of its own venv (.tools/bacalhau-sdk/sdk, scripts/setup-bacalhau-sdk.sh)
and times submit() to the first states() that says Completed, polling every 50 ms (the SDK has no wait). The
CLI figure is the whole `bacalhau docker run` process, its start-up included: what a user waits for.

    .venv/bin/python benchmarks/sdk_latency.py [--runs 10]

Measured on the shared 2-core machine (load 6-8), echo hi in bacalhau/busybox, 10 runs each interleaved:
SDK submit -> Completed median 738 ms; `bacalhau docker run` 993 ms (ratio 0.74; the CLI's figure holds its
~0.2 s Python start-up and its wait, the SDK's its 50 ms polls).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _serve import BIN, IMAGE, serve

ROOT = Path(__file__).resolve().parent.parent
SDK_PYTHON = ROOT / ".tools" / "bacalhau-sdk" / "sdk" / "bin" / "python"

SDK_LOOP = """
import json, sys, time
from bacalhau_sdk.api import submit, states
from bacalhau_sdk.config import get_client_id
from bacalhau_apiclient.models.deal import Deal
from bacalhau_apiclient.models.job_spec_docker import JobSpecDocker
from bacalhau_apiclient.models.publisher_spec import PublisherSpec
from bacalhau_apiclient.models.spec import Spec
spec = Spec(engine="Docker", verifier="Noop", publisher_spec=PublisherSpec(type="IPFS"),
            docker=JobSpecDocker(image=sys.argv[1], entrypoint=["echo", "hi"]), deal=Deal(concurrency=1),
            timeout=300)
for _ in sys.stdin:
    start = time.perf_counter()
    job_id = submit(dict(APIVersion="V1beta1", ClientID=get_client_id(), Spec=spec)).job.metadata.id
    while True:
        st = states(job_id).state
        if st.state in ("Completed", "Error", "Cancelled"):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    out = [e.run_output.stdout for e in st.executions or [] if e.state == "Completed"]
    print(json.dumps({"state": st.state, "stdout": out, "elapsed": elapsed}), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if not SDK_PYTHON.exists():
        raise SystemExit(f"{SDK_PYTHON} is missing: run scripts/setup-bacalhau-sdk.sh")
    with serve() as served, tempfile.TemporaryDirectory() as client_dir:
        env = {"BACALHAU_API_HOST": "127.0.0.1", "BACALHAU_API_PORT": str(served.api_port),
               "BACALHAU_DIR": client_dir, "PATH": served.env.get("PATH", "")}
        sdk = subprocess.Popen([str(SDK_PYTHON), "-c", SDK_LOOP, IMAGE], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        assert sdk.stdin is not None and sdk.stdout is not None
        sdk_in, sdk_out = sdk.stdin, sdk.stdout

        def sdk_once() -> float:
            sdk_in.write("go\n")
            sdk_in.flush()
            result = json.loads(sdk_out.readline())
            if result["state"] != "Completed" or result["stdout"] != ["hi\n"]:
                raise SystemExit(f"SDK job did not complete: {result}")
            return float(result["elapsed"])

        def cli_once() -> float:
            start = time.perf_counter()
            out = subprocess.run([BIN, "docker", "run", IMAGE, "--", "echo", "hi"], env=served.env,
                                 capture_output=True, check=False)
            elapsed = time.perf_counter() - start
            if out.returncode != 0 or b"hi" not in out.stdout:
                raise SystemExit(f"bacalhau docker run failed: {out.stderr.decode()[-500:]}")
            return elapsed

        try:
            sdk_once(), cli_once()      # warm both paths
            sdk_times, cli_times = [], []
            for _ in range(args.runs):
                sdk_times.append(sdk_once())
                cli_times.append(cli_once())
        finally:
            sdk_in.close()
            sdk.wait(timeout=30)
    s, c = statistics.median(sdk_times), statistics.median(cli_times)
    print(f"bacalhau-sdk 1.0.3 submit -> Completed  median {s * 1000:7.1f} ms  (n={args.runs}, 50 ms polls)")
    print(f"bacalhau docker run (whole process)     median {c * 1000:7.1f} ms  (n={args.runs})")
    print(f"ratio SDK / CLI: {s / c:.2f}")


if __name__ == "__main__":
    main()
