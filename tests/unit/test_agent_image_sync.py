"""The agent's ``stowkit-image-sync`` action, run by ``stowkit agent`` as a host runs it."""

from __future__ import annotations

import json
import logging

from tests.fakes.catalog import CLIENT, served_catalog


def test_the_agent_runs_a_catalog_jobs_image_sync(env, capsys, tmp_path, monkeypatch):
    # `stowkit agent` sets up this process's logging (oslo.log, on the captured
    # stderr): put the root logger back for the tests that follow.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    monkeypatch.setattr(root, "level", root.level)
    image = str(tmp_path / "a.img")
    assert env("image", "create", image, "--name", "a", "--region", "One", "--public") == 0
    with served_catalog(tmp_path / "catalog", monkeypatch) as catalog:
        job = {
            "client_id": CLIENT,
            "description": "images to Two",
            "job_actions": [
                {"freezer_action": {"action": "stowkit-image-sync", "regions": ["Two"]}}
            ],
            "job_schedule": {},
        }
        job_id = catalog.create_job(job)
        assert env("agent", "--once") == 0
        (done,) = [j for j in catalog.client_jobs(CLIENT) if j["job_id"] == job_id]
    assert done["job_schedule"]["result"] == "success", done["job_schedule"]
    capsys.readouterr()
    assert env("image", "list", "--region", "Two", "-f", "json") == 0
    assert [i["name"] for i in json.loads(capsys.readouterr().out)] == ["a"]
