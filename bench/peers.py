"""Peers the benchmark can put side by side with Tollgate: the LiteLLM proxy.

LiteLLM is installed from PyPI into its own virtualenv, .run/bench/litellm-venv (once; later
runs reuse it), and started with bench/litellm.yaml in front of the same canned upstream:
2 workers, logging and telemetry off, its cost map read locally (no outbound request).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Callable

from harness import BENCH_DIR, BenchError, Managed, Processes, http_get, wait_until

LITELLM_REQUIREMENT = "litellm[proxy]"
START_DEADLINE_S = 180.0


def ensure_litellm(run_dir: Path, say: Callable[[str], None]) -> Path:
    """The `litellm` executable of the benchmark's virtualenv, installed there if missing."""
    venv = run_dir / "litellm-venv"
    executable = venv / "bin" / "litellm"
    if executable.is_file():
        return executable
    say(f"installing {LITELLM_REQUIREMENT} into {venv} (one time; this takes a few minutes)")
    if not (venv / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log = run_dir / "litellm-install.log"
    with open(log, "wb") as handle:
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                               "--no-input", LITELLM_REQUIREMENT], stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not executable.is_file():
        raise BenchError(f"pip install {LITELLM_REQUIREMENT} failed; see {log}")
    return executable


def start_litellm(processes: Processes, run_dir: Path, port: int, upstream_url: str,
                  say: Callable[[str], None]) -> tuple[Managed, str]:
    """Starts the LiteLLM proxy on 127.0.0.1:port; returns it and its master key once it is live.

    LiteLLM refuses to start without a master key; clients authenticate with it, as they do with
    a Tollgate key. A fresh one per run, never written to a file or the log.
    """
    executable = ensure_litellm(run_dir, say)
    config = run_dir / "litellm.yaml"
    config.write_text((BENCH_DIR / "litellm.yaml").read_text().replace("@UPSTREAM_URL@", upstream_url))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LITELLM_", "OPENAI_"))}
    master_key = "sk-bench-" + secrets.token_hex(24)
    env.update({"LITELLM_MASTER_KEY": master_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                "LITELLM_MODE": "PRODUCTION", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    command = [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
               "--num_workers", "2"]
    managed = processes.spawn("litellm", command, run_dir / "litellm.log", env=env, cwd=run_dir)
    say(f"starting LiteLLM on :{port} (2 workers)")
    wait_until("LiteLLM", lambda: (http_get(port, "/health/liveliness") or (0,))[0] == 200, START_DEADLINE_S,
               managed.problem)
    return managed, master_key
