"""``stowkit plugin serve`` on a real btrfs against hostile clients (127.0.0.1 only, bounded)."""

from __future__ import annotations

import json
import threading

import pytest

from tests.fakes.docker_plugin import exchange
from tests.fakes.plugin_process import PluginProcess, delete_tree


@pytest.fixture
def plugin(service, tmp_path):
    btrfs = service("btrfs")
    proc = PluginProcess(btrfs["mounts"][0], tmp_path)
    proc.start()
    yield proc
    proc.stop()
    delete_tree(proc.root)


def _raw(sock_path: str, data: bytes) -> tuple[int, dict]:
    answer = exchange(sock_path, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_mount_racing_remove_never_leaves_a_stale_mount(plugin):
    """60 rounds of Mount against Remove: a removed volume is never mounted, nor is its heir."""
    for round_ in range(60):
        name = f"race{round_}"
        assert plugin.call("/VolumeDriver.Create", {"Name": name})["Err"] == ""
        results: dict[str, dict] = {}
        go = threading.Barrier(2)

        def mount(name=name, go=go, results=results):
            go.wait()
            results["mount"] = plugin.call("/VolumeDriver.Mount", {"Name": name, "ID": "c1"})

        def remove(name=name, go=go, results=results):
            go.wait()
            results["remove"] = plugin.call("/VolumeDriver.Remove", {"Name": name})

        threads = [threading.Thread(target=mount), threading.Thread(target=remove)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        removed = results["remove"]["Err"] == ""
        if removed:
            assert results["mount"]["Err"], (round_, results)
            assert plugin.call("/VolumeDriver.Create", {"Name": name})["Err"] == ""
            got = plugin.call("/VolumeDriver.Get", {"Name": name})
            assert got["Volume"]["Status"]["mounts"] == 0, (round_, results, got)
            assert plugin.call("/VolumeDriver.Remove", {"Name": name})["Err"] == ""
        else:
            assert results["mount"]["Err"] == "", (round_, results)
            plugin.call("/VolumeDriver.Unmount", {"Name": name, "ID": "c1"})
            assert plugin.call("/VolumeDriver.Remove", {"Name": name})["Err"] == ""


def test_burst_of_fifty_clients_is_served(plugin):
    failures: list[BaseException] = []
    answers: list[dict] = []
    lock = threading.Lock()

    def client():
        try:
            for _ in range(6):
                got = plugin.call("/VolumeDriver.List")
                with lock:
                    answers.append(got)
        except BaseException as exc:
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    assert len(answers) == 300 and all(a["Err"] == "" for a in answers)


@pytest.mark.parametrize(
    "data",
    [
        b"POST /VolumeDriver.Get HTTP/1.1\r\nContent-Length: 200001\r\n\r\n"
        + b"[" * 100_000
        + b"]" * 100_000
        + b"\n",
        b"GARBAGE\r\n\r\n",
        b"PUT /VolumeDriver.List HTTP/1.1\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    ],
    ids=["deep-json", "bad-request-line", "bad-method", "long-uri"],
)
def test_hostile_requests_get_json_errors(plugin, data):
    status, payload = _raw(plugin.socket, data)
    assert isinstance(payload.get("Err"), str) and payload["Err"], (status, payload)
    # and the plugin still serves
    assert plugin.call("/Plugin.Activate") == {"Implements": ["VolumeDriver"]}
