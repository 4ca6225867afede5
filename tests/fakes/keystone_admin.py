"""Logins to the harness Keystone, and the projects and users a functional test makes there.

A ``creds`` record is one of the harness's users (``service("keystone")["admin"]``,
``["member"]``...): auth_url, username, password, project_name and, when not
``Default``, the user's and the project's domain names.
"""

from __future__ import annotations

from typing import Any


def session(creds: dict[str, Any]):
    """A keystoneauth1 session logged in (password, project scope) as ``creds``."""
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3

    auth = v3.Password(
        auth_url=creds["auth_url"],
        username=creds["username"],
        password=creds["password"],
        project_name=creds["project_name"],
        user_domain_name=creds.get("user_domain_name", "Default"),
        project_domain_name=creds.get("project_domain_name", "Default"),
    )
    return ks_session.Session(auth=auth)


def token(creds: dict[str, Any]) -> str:
    """A token of ``creds`` (scoped to its project)."""
    return session(creds).get_token()


def make_admin(creds: dict[str, Any], name: str, password: str) -> str:
    """A fresh project and a user with the admin role on it; returns the project id."""
    sess = session(creds)
    url = creds["auth_url"].rstrip("/")
    project = sess.post(
        f"{url}/projects", json={"project": {"name": name, "domain_id": "default"}}
    ).json()["project"]["id"]
    user = sess.post(
        f"{url}/users",
        json={
            "user": {
                "name": name,
                "password": password,
                "domain_id": "default",
                "default_project_id": project,
            }
        },
    ).json()["user"]["id"]
    role = sess.get(f"{url}/roles?name=admin").json()["roles"][0]["id"]
    sess.put(f"{url}/projects/{project}/users/{user}/roles/{role}")
    return project
