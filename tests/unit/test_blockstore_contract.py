"""The BlockStore contract checks every call before a backend's primitive sees it.

A backend that checks nothing at all cannot be handed a bad name, an object
past the device's end, data of the wrong size, a range outside an object or
an invalid geometry: the public methods refuse them first.
"""

from __future__ import annotations

import pytest
from oslo_config import cfg

from stowkit.corelib.blockstore import BlockDevice, BlockStore
from stowkit.corelib.errors import InvalidArgument

OSIZE = 4096


class CarelessStore(BlockStore):
    """A backend whose primitives check nothing and record every call."""

    def __init__(self) -> None:
        super().__init__(cfg.ConfigOpts(), "blockstore_careless")
        self.devices = {"dev": BlockDevice("dev", 4 * OSIZE, OSIZE)}
        self.calls: list[tuple] = []

    def _create_device(self, name, size, object_size):
        self.calls.append(("create", name, size, object_size))
        self.devices[name] = BlockDevice(name, size, object_size)
        return self.devices[name]

    def _get_device(self, name, details):
        self.calls.append(("get", name))
        return self.devices[name]

    def list_devices(self, details=False):
        return list(self.devices.values())

    def _destroy_device(self, name):
        self.calls.append(("destroy", name))

    def _read_object(self, device, index):
        self.calls.append(("read", device, index))

    def _read_range(self, device, index, start, length):
        self.calls.append(("range", device, index, start, length))

    def _write_object(self, device, index, data):
        self.calls.append(("write", device, index, len(data)))

    def _delete_object(self, device, index):
        self.calls.append(("delete", device, index))

    def _list_objects(self, device):
        self.calls.append(("list", device))
        return iter(())

    def _control_get(self, device, key):
        return None

    def _control_create(self, device, key, data):
        return True

    def _control_replace(self, device, key, data):
        pass

    def _control_delete(self, device, key):
        pass


def primitive_calls(store: CarelessStore) -> list[tuple]:
    return [c for c in store.calls if c[0] != "get"]  # the geometry lookup is the contract's


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.read_object("dev", 4),  # past the end
        lambda s: s.read_object("dev", -1),
        lambda s: s.read_object("../dev", 0),
        lambda s: s.write_object("dev", 0, b"\0" * (OSIZE - 1)),  # not the object size
        lambda s: s.write_object("dev", 9, b"\0" * OSIZE),
        lambda s: s.delete_object("dev", 4),
        lambda s: s.read_range("dev", 0, OSIZE - 2, 4),  # outside the object
        lambda s: s.read_range("dev", 4, 0, 4),
        lambda s: s.list_objects("bad/name"),
        lambda s: s.create_device("new", 3 * OSIZE + 1, OSIZE),  # not a multiple
        lambda s: s.create_device("new", 4 * OSIZE, 3000),  # not a power of two
        lambda s: s.create_device("bad/name", 4 * OSIZE, OSIZE),
        lambda s: s.get_device("bad/name"),
    ],
)
def test_a_backend_primitive_never_sees_a_call_the_contract_refuses(call):
    store = CarelessStore()
    with pytest.raises(InvalidArgument):
        call(store)
    assert primitive_calls(store) == []


def test_checked_calls_reach_the_primitives():
    store = CarelessStore()
    store.read_object("dev", 3)
    store.write_object("dev", 0, b"\0" * OSIZE)
    store.delete_object("dev", 1)
    store.read_range("dev", 2, 8, 16)
    list(store.list_objects("dev"))
    assert primitive_calls(store) == [
        ("read", "dev", 3),
        ("write", "dev", 0, OSIZE),
        ("delete", "dev", 1),
        ("range", "dev", 2, 8, 16),
        ("list", "dev"),
    ]


def test_a_recreated_device_is_checked_against_its_new_geometry():
    store = CarelessStore()
    store.read_object("dev", 3)  # geometry remembered: 4 objects
    store.delete_device("dev")
    store.create_device("dev", 8 * OSIZE, OSIZE)
    store.read_object("dev", 7)
    assert ("read", "dev", 7) in store.calls
