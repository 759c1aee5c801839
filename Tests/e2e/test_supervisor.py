"""The supervisor: it replaces a worker that dies, and drains in-flight streams on SIGTERM."""

from __future__ import annotations

import os
import signal
import time

import openai
import pytest

GRACE_SECONDS = 10


def exit_status(stack, pid: int, timeout: float, wait_until) -> int | None:
    """Exit code of the supervisor `pid` once it exits within `timeout`, else None.

    The Stack started the supervisor, so its Popen should read the status (Stack.wait_supervisor,
    which scripts/stack.py offers beyond the interface); otherwise reap it here as our child.
    """
    if hasattr(stack, "wait_supervisor"):
        return stack.wait_supervisor(timeout)

    def reaped() -> tuple[int] | None:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pytest.fail(f"supervisor {pid} is not a child of the test process: cannot read its exit status")
        return (os.waitstatus_to_exitcode(status),) if done == pid else None

    result = wait_until(reaped, timeout)
    return None if result is None else result[0]


def test_killed_worker_is_replaced_and_requests_keep_working(stack, client, mock, make_tag, chat, kit):
    before = set(stack.worker_pids())
    assert len(before) == 2, f"expected 2 workers, found {sorted(before)}"
    victim = min(before)

    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    replaced = kit.wait_until(lambda: set(stack.worker_pids()) - before, timeout=1.0, interval=0.01)
    replaced_after = time.monotonic() - killed_at

    assert replaced, f"no new worker within 1 s of killing {victim}; workers now {stack.worker_pids()}"
    assert victim not in stack.worker_pids()
    print(f"worker replaced after {replaced_after * 1000:.0f} ms")
    for index in range(6):
        tag = make_tag(str(index))
        completion = client.chat.completions.create(**chat(tag=tag, events=1))
        assert completion.choices[0].message.content == "tok0 "
        assert mock.wait(tag)["completed"]


@pytest.fixture
def draining(stack_factory, kit):
    """A dedicated stack for the SIGTERM test (18083 / 18093): the test stops its supervisor."""
    serving = stack_factory("e2e-sigterm", 18083, 18093)
    try:
        yield serving
    finally:
        serving.stop()
    kit.assert_no_secrets(serving.logs(), "stack e2e-sigterm")


def test_sigterm_finishes_in_flight_stream_and_exits_zero(draining, kit, tag, chat):
    sdk = openai.OpenAI(base_url=draining.base_url, api_key=kit.CLIENT_KEY, max_retries=0, timeout=30)
    control = kit.MockControl(draining.mock_url)
    supervisor = draining.supervisor_pid()

    try:
        chunks = iter(sdk.chat.completions.create(**chat(tag=tag, events=10, delay_ms=200), stream=True))
        received = [next(chunks)]
        os.kill(supervisor, signal.SIGTERM)
        signalled_at = time.monotonic()
        received += list(chunks)
        code = exit_status(draining, supervisor, GRACE_SECONDS + 5, kit.wait_until)
        exited_after = time.monotonic() - signalled_at
        record = control.wait(tag)
    finally:
        sdk.close()
        control.close()

    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == "".join(f"tok{i} " for i in range(10)), "the in-flight stream was cut by SIGTERM"
    assert received[-1].choices[0].finish_reason == "stop"
    assert record["completed"] and not record["disconnected"]
    assert code == 0, f"supervisor exit status {code} ({exited_after:.1f} s after SIGTERM)"
    assert exited_after <= GRACE_SECONDS + 1, f"supervisor took {exited_after:.1f} s to exit"
