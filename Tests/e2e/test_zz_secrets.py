"""Runs last (file order): no log of the main stack holds a key or prompt text.

The session fixture scans the logs once more after the stack has shut down, and every extra
stack is scanned when its module is done.
"""

from __future__ import annotations

import openai
import pytest


def test_logs_hold_no_keys_and_no_prompt_text(stack, client, raw, mock, make_tag, chat, prompt, kit):
    ok_tag, failing_tag = make_tag("ok"), make_tag("failing")
    client.chat.completions.create(**chat(tag=ok_tag))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**chat(tag=failing_tag, status=500, error_message="upstream failure"))
    # Error paths are where bodies get logged: a body that is not JSON, with the prompt in it.
    raw.post("/chat/completions", content=f'{{"messages": "{prompt}"'.encode(),
             headers={"content-type": "application/json"})
    raw.post("/nowhere", json={"messages": [{"role": "user", "content": prompt}]})
    mock.wait(ok_tag)
    mock.wait(failing_tag)

    kit.assert_no_secrets(stack.logs(), "stack e2e")
