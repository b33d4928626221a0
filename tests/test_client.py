"""The headless queue client's error paths (the happy path runs against a real server in integration)."""

from __future__ import annotations

import json
import socket

from accel.cli import main


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    workflow = tmp_path / "w.json"
    workflow.write_text(json.dumps({"1": {"class_type": "SaveLatent", "inputs": {}}}))
    assert main(["queue", str(workflow), "--server", f"http://127.0.0.1:{closed_port()}"]) == 1
    assert "cannot reach the ComfyUI server" in capsys.readouterr().err


def test_ui_format_and_broken_files_are_refused(tmp_path, capsys):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    assert main(["queue", str(ui)]) == 2
    assert "UI-format workflow" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["queue", str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err
