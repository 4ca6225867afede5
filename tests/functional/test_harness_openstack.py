"""Smoke tests of the OpenStack part of the harness: two Keystones, four Glance regions.

They prove the ``keystone`` and ``glance`` records are right (URLs, credentials,
project ids, catalog endpoints) with the same client libraries stowkit uses.
"""

from __future__ import annotations

import io
import uuid

import pytest
from glanceclient import client as glance_client
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

# (keystone section, region): "primary" is the top level of the records.
REGIONS = [
    ("primary", "RegionOne"),
    ("primary", "RegionTwo"),
    ("primary", "RegionThree"),
    ("second", "RegionOther"),
]


def section(record: dict, name: str) -> dict:
    return record if name == "primary" else record[name]


def session_for(creds: dict) -> ks_session.Session:
    # The credential dicts are meant to be passed as they are.
    return ks_session.Session(auth=v3.Password(**creds))


@pytest.mark.parametrize("which", ["primary", "second"])
@pytest.mark.parametrize("user", ["admin", "member", "other", "service"])
def test_keystone_issues_a_scoped_token(service, which, user):
    ks = section(service("keystone"), which)
    creds = ks[user]
    sess = session_for(creds)
    assert sess.get_token()
    assert sess.get_project_id() == creds["project_id"]
    assert sess.get_user_id() == creds["user_id"]


def test_the_two_keystones_are_independent(service):
    rec = service("keystone")
    first, second = rec["member"], rec["second"]["member"]
    assert rec["auth_url"] != rec["second"]["auth_url"]
    assert first["project_id"] != second["project_id"]
    # The same user name with the first Keystone's password is refused by the second.
    crossed = dict(second, password=first["password"])
    crossed.pop("user_id")
    with pytest.raises(ks_exc.Unauthorized):
        session_for(crossed).get_token()


@pytest.mark.parametrize("which,region", REGIONS)
def test_catalog_points_at_the_recorded_glance(service, which, region):
    glance = section(service("glance"), which)
    creds = section(service("keystone"), which)["member"]
    sess = session_for(creds)
    for interface in ("public", "internal", "admin"):
        url = sess.get_endpoint(service_type="image", region_name=region, interface=interface)
        assert url.rstrip("/") == glance["regions"][region]


@pytest.mark.parametrize("which,region", REGIONS)
def test_image_created_listed_and_deleted_in_each_region(service, which, region):
    glance = section(service("glance"), which)
    creds = section(service("keystone"), which)["member"]
    client = glance_client.Client("2", session=session_for(creds), region_name=region)
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().bytes * 64
    image = client.images.create(
        name=name, disk_format="raw", container_format="bare", stowkit_smoke="yes"
    )
    try:
        client.images.upload(image.id, io.BytesIO(payload))
        listed = [i for i in client.images.list(filters={"name": name})]
        assert [i.id for i in listed] == [image.id]
        got = listed[0]
        assert got.status == "active"
        assert got.size == len(payload)
        assert got.owner == creds["project_id"]
        assert got.stowkit_smoke == "yes"
        assert b"".join(client.images.data(image.id)) == payload
        assert glance["regions"][region].startswith("http://127.0.0.1:")
    finally:
        client.images.delete(image.id)
    with pytest.raises(glance_exc.HTTPNotFound):
        client.images.get(image.id)


def test_regions_do_not_share_images(service):
    rec = service("keystone")
    sess = session_for(rec["member"])
    one = glance_client.Client("2", session=sess, region_name="RegionOne")
    two = glance_client.Client("2", session=sess, region_name="RegionTwo")
    image = one.images.create(name=f"smoke-{uuid.uuid4().hex[:8]}", disk_format="raw",
                              container_format="bare")  # fmt: skip
    try:
        assert image.id in {i.id for i in one.images.list()}
        assert image.id not in {i.id for i in two.images.list()}
    finally:
        one.images.delete(image.id)


def test_projects_are_isolated(service):
    rec = service("keystone")
    mine = glance_client.Client("2", session=session_for(rec["member"]), region_name="RegionOne")
    theirs = glance_client.Client("2", session=session_for(rec["other"]), region_name="RegionOne")
    image = mine.images.create(name=f"smoke-{uuid.uuid4().hex[:8]}", disk_format="raw",
                               container_format="bare", visibility="private")  # fmt: skip
    try:
        assert image.id not in {i.id for i in theirs.images.list()}
        with pytest.raises(glance_exc.HTTPNotFound):
            theirs.images.get(image.id)
    finally:
        mine.images.delete(image.id)


def test_one_region_can_be_stopped_and_started(service):
    from tools.stack import glance as harness_glance

    rec = service("glance")
    region = "RegionThree"
    sess = session_for(service("keystone")["member"])
    client = glance_client.Client("2", session=sess, region_name=region)
    image = client.images.create(name=f"smoke-{uuid.uuid4().hex[:8]}", disk_format="raw",
                                 container_format="bare")  # fmt: skip
    try:
        with harness_glance.region_stopped(region):
            assert region in service("glance")["stopped"]
            with pytest.raises(ks_exc.ConnectFailure):
                sess.get(rec["regions"][region] + "/v2/images", authenticated=True)
            # The other regions stay up.
            other = glance_client.Client("2", session=sess, region_name="RegionOne")
            list(other.images.list())
        # Back on the same URL, with the image it had.
        assert service("glance")["stopped"] == []
        assert client.images.get(image.id).id == image.id
    finally:
        client.images.delete(image.id)


def test_deleted_image_id_reusable_after_purge(service):
    from tools.stack import glance as harness_glance

    region = "RegionTwo"
    client = glance_client.Client(
        "2", session=session_for(service("keystone")["admin"]), region_name=region
    )
    image_id = str(uuid.uuid4())
    meta = {"disk_format": "raw", "container_format": "bare"}
    client.images.create(id=image_id, name="smoke-purge", **meta)
    client.images.delete(image_id)
    with pytest.raises(glance_exc.HTTPConflict):
        client.images.create(id=image_id, name="smoke-purge", **meta)
    harness_glance.purge_deleted(region)
    assert client.images.create(id=image_id, name="smoke-purge", **meta).id == image_id
    client.images.delete(image_id)
